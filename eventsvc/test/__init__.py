"""eventsvc's tests: run them with C{trial eventsvc}."""
