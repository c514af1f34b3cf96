"""Operating eventsvc: logging now; monitoring, metrics and signals to come."""
