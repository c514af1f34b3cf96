"""
The C{eventsvc} admin command: subcommands that fit the configuration file.

    eventsvc check-config --config patch.toml
    eventsvc config show --config patch.toml
    eventsvc health-check --config patch.toml
    eventsvc publish --config patch.toml --type nodeTerminated --file event.json
    eventsvc sub --config patch.toml 'habitat.event.>'
    eventsvc request --config patch.toml service.echo hello
    eventsvc dead-letters list --config patch.toml
    eventsvc dead-letters replay --config patch.toml --all
    eventsvc spool stats --config patch.toml
    eventsvc stream ls --config patch.toml
    eventsvc consumer info --config patch.toml ORDERS processor
    eventsvc certs --out dev/certs

Each says what happened in a line and exits 0 on success, 1 when something
is unhealthy or failed, 78 for a configuration problem, 2 for a wrong
command line.  This package only parses command lines and talks to a
running eventsvc as a client would; it never runs the service.
"""

from __future__ import annotations

import argparse
import socket
from typing import Any, Callable, Optional, Sequence

from eventsvc import __version__
from eventsvc.cli.common import EXIT_CODES

__all__ = ["main", "parser"]


def _lazy(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    """Run C{module.name}, imported only when that subcommand runs (a fast --help)."""

    def run(options: argparse.Namespace) -> int:
        import importlib

        return getattr(importlib.import_module("eventsvc.cli." + module), name)(options)  # type: ignore[no-any-return]

    return run


def _command(commands: Any, name: str, summary: str, description: str, examples: Sequence[str], run: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
    epilog = "examples:\n" + "".join("  {}\n".format(e) for e in examples) + "\n" + EXIT_CODES
    p = commands.add_parser(
        name, help=summary, description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(run=run)
    return p


def _config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", required=True, help="the TOML configuration patch")


def _timeout(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the server (default 5)")


def _service_identity(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cert", help="client certificate for the service listener (default: [tls] cert_path)")
    p.add_argument("--key", help="its key (default: [tls] key_path)")
    p.add_argument("--ca", help="CA to trust (default: [tls] root_ca_path)")
    p.add_argument("--server-name", default="localhost", help="name to check on the service's certificate (default localhost)")


def _client(p: argparse.ArgumentParser) -> None:
    _config(p)
    _timeout(p)
    _service_identity(p)
    p.add_argument("--gateway", action="store_true", help="connect to the gateway listener instead of the service listener")
    p.add_argument("--token", help="the gateway token (default: the first plain one in [gateway] tokens)")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="eventsvc", description="Administer an eventsvc deployment: every subcommand reads the same configuration file.",
        epilog=EXIT_CODES,
    )
    top.add_argument("--version", action="version", version="eventsvc " + __version__)
    commands = top.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    p = _command(commands, "check-config", "check a configuration and every file it names",
                 "Load the configuration and everything it names (certificates, token files, Python handlers and "
                 "authenticators) as start-up would, print what will run, and warn about event types that would be refused.",
                 ["eventsvc check-config --config /etc/eventsvc/patch.toml"], _lazy("inspect", "check_config"))
    _config(p)

    config = commands.add_parser("config", help="show the effective configuration",
                                 description="Show the configuration as eventsvc will use it.")
    config_commands = config.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    config_commands.required = True
    p = _command(config_commands, "show", "every key with defaults filled in, secrets redacted",
                 "Print the effective configuration as TOML: the patch over the defaults, relative paths resolved, "
                 "tokens, passwords and users' secrets redacted.",
                 ["eventsvc config show --config patch.toml"], _lazy("inspect", "config_show"))
    _config(p)

    p = _command(commands, "health-check", "request/reply echo through the node's listener, and the server's own health",
                 "Log in to the gateway with the per-start health-check token (or, on a node without [gateway], to the "
                 "service listener with the service's mutual-TLS identity, [tls] or --cert and --key), answer a request "
                 "of our own through it, then ask the server how it is: what /healthz says (starting, lame duck, "
                 "shutting down, a configured route down). For systemd, load balancers and monitoring.",
                 ["eventsvc health-check --config patch.toml", "eventsvc health-check --config patch.toml --ca ca.crt --timeout 2"],
                 _lazy("messaging", "health_check"))
    _config(p)
    _timeout(p)
    _service_identity(p)

    p = _command(commands, "publish", "send one event and print the acknowledgement",
                 "Publish one event on <subject_prefix>.<type> at the service listener (with the [tls] identity) and "
                 "print the acknowledgement. event_id, type and published are filled in when the file lacks them.",
                 ["eventsvc publish --config patch.toml --type event_feed --file dev/event.json",
                  "echo '{\"producer\": {\"id\": \"me\"}}' | eventsvc publish --config patch.toml --type nodeTerminated"],
                 _lazy("messaging", "publish"))
    _config(p)
    p.add_argument("--type", required=True, help="the event type (e.g. nodeTerminated)")
    p.add_argument("--file", default="-", help="the event as JSON (default: standard input)")
    _timeout(p)
    _service_identity(p)

    p = _command(commands, "sub", "print the messages on a subject",
                 "Subscribe with the configuration's identity (the service's certificate, or with --gateway a token) "
                 "and print each message with its headers. A subscription the server refuses (permissions) is an error.",
                 ["eventsvc sub --config patch.toml 'event.>'",
                  "eventsvc sub --config patch.toml --gateway --token T --count 1 _INBOX.mine.>"],
                 _lazy("messaging", "sub"))
    p.add_argument("subject", help="the subject, wildcards allowed")
    p.add_argument("--queue", help="join this queue group")
    p.add_argument("--count", type=int, default=0, help="exit after this many messages (default: run until interrupted)")
    p.add_argument("--wait", type=float, default=0, help="exit 1 when no message comes for this many seconds (default: wait forever)")
    _client(p)

    p = _command(commands, "request", "send a request and print the reply",
                 "Publish DATA on SUBJECT with a reply inbox and print the reply with its headers; no responders and "
                 "no reply within --timeout are errors.",
                 ["eventsvc request --config patch.toml service.echo hello",
                  "eventsvc request --config patch.toml --header Trace:1 orders.get '{\"id\": 7}'"],
                 _lazy("messaging", "request"))
    p.add_argument("subject", help="the subject")
    p.add_argument("data", nargs="?", default="", help="the payload (default: empty)")
    p.add_argument("--header", action="append", help="Key:Value, as many as needed")
    _client(p)

    dead = commands.add_parser("dead-letters", help="list dead-lettered events, or put them back",
                               description="The events a handler gave up on ([events] dead_letter_file).")
    dead_commands = dead.add_subparsers(dest="dead_command", metavar="SUBCOMMAND")
    dead_commands.required = True
    p = _command(dead_commands, "list", "one line per dead letter",
                 "List the dead letters: when, which handler, the event id, the attempts and why.",
                 ["eventsvc dead-letters list --config patch.toml", "eventsvc dead-letters list --config patch.toml --json"],
                 _lazy("stores", "dead_letters_list"))
    _config(p)
    p.add_argument("--json", action="store_true", help="one JSON object per record and line, nothing else (no lines when there are none)")
    p = _command(dead_commands, "replay", "put dead letters back for delivery",
                 "Hand dead letters back to the running service, for the handler that gave up on each: it spools and "
                 "acknowledges each one, and only then is it taken out of the file, so each is put back exactly once.",
                 ["eventsvc dead-letters replay --config patch.toml --id evt-1 --id evt-2",
                  "eventsvc dead-letters replay --config patch.toml --all"],
                 _lazy("stores", "dead_letters_replay"))
    _config(p)
    _timeout(p)
    _service_identity(p)
    p.add_argument("--id", action="append", default=[], help="an event id to replay (as many as needed)")
    p.add_argument("--all", action="store_true", help="replay every dead letter")

    spool = commands.add_parser("spool", help="what the event log still owes",
                                description="The event log: the events stream ([events] log = \"stream\") or the spool in [service] data_dir.")
    spool_commands = spool.add_subparsers(dest="spool_command", metavar="SUBCOMMAND")
    spool_commands.required = True
    p = _command(spool_commands, "stats", "depth per handler, oldest event, size on disk",
                 "Read the event log's files (the events stream's, or the spool's; the service may be running, and "
                 "its lock is not taken) and say how many events each handler still owes, the oldest of them, and "
                 "the log's size.",
                 ["eventsvc spool stats --config patch.toml", "eventsvc spool stats --config patch.toml --json"],
                 _lazy("stores", "spool_stats"))
    _config(p)
    p.add_argument("--json", action="store_true", help="the figures as one JSON object")

    _jetstream(commands)

    p = _command(commands, "certs", "make a FAKE development CA and certificates",
                 "Write a FAKE development CA and service, gateway and client certificates: for trying eventsvc out, "
                 "never for production.",
                 ["eventsvc certs --out dev/certs", "eventsvc certs --out /tmp/c --names localhost,node1.example --force",
                  "eventsvc certs --out /tmp/automate --ca-cert root_ca.crt   # Automate's [tls] names: service.crt, "
                  "service.key, root_ca.crt"],
                 _lazy("certs", "certs"))
    p.add_argument("--out", required=True, help="folder to write them to")
    p.add_argument("--names", default="localhost,127.0.0.1,::1", help="DNS names and IPs they are valid for")
    p.add_argument("--force", action="store_true", help="replace existing files")
    for role, what in (("ca", "the CA"), ("service", "the service's"), ("gateway", "the gateway's front-end"), ("client", "a client's")):
        p.add_argument("--{}-cert".format(role), metavar="FILE",
                       help="{} certificate, in --out unless absolute (default {}.crt)".format(what, role))
        p.add_argument("--{}-key".format(role), metavar="FILE", help="its key (default {}.key)".format(role))
    return top


def _jetstream(commands: Any) -> None:
    """C{stream ls|info} and C{consumer ls|info}: JetStream read through its API, as any client reads it."""

    def options(p: argparse.ArgumentParser) -> None:
        _client(p)
        p.add_argument("--domain", help="the JetStream domain to ask ($JS.<domain>.API; default: the server's own)")
        p.add_argument("--json", action="store_true", help="the API's answers as JSON (listings: one object a line)")

    stream = commands.add_parser("stream", help="JetStream streams: list them, or describe one",
                                 description="JetStream's streams, asked through $JS.API as any NATS client asks.")
    stream_commands = stream.add_subparsers(dest="stream_command", metavar="SUBCOMMAND")
    stream_commands.required = True
    p = _command(stream_commands, "ls", "one line per stream: storage, subjects, messages, bytes, consumers",
                 "List the streams (STREAM.LIST, every page): each one's storage, subjects, messages, bytes, consumers "
                 "and when its last message came.",
                 ["eventsvc stream ls --config patch.toml", "eventsvc stream ls --config patch.toml --json"],
                 _lazy("jetstream", "stream_ls"))
    options(p)
    p = _command(stream_commands, "info", "a stream's configuration and state",
                 "Describe one stream (STREAM.INFO): its configuration (subjects, retention, limits) and its state "
                 "(messages, bytes, first and last, consumers).",
                 ["eventsvc stream info --config patch.toml ORDERS", "eventsvc stream info --config patch.toml --json ORDERS"],
                 _lazy("jetstream", "stream_info"))
    p.add_argument("stream", help="the stream's name")
    options(p)

    consumer = commands.add_parser("consumer", help="JetStream consumers: list a stream's, or describe one",
                                   description="JetStream's consumers, asked through $JS.API as any NATS client asks.")
    consumer_commands = consumer.add_subparsers(dest="consumer_command", metavar="SUBCOMMAND")
    consumer_commands.required = True
    p = _command(consumer_commands, "ls", "one line per consumer of a stream: kind, pending, acks, redeliveries",
                 "List a stream's consumers (CONSUMER.LIST, every page): each one's kind (durable or ephemeral, pull or "
                 "push), ack policy, messages pending, awaiting an ack and redelivered, pulls waiting, last delivery.",
                 ["eventsvc consumer ls --config patch.toml ORDERS", "eventsvc consumer ls --config patch.toml --json ORDERS"],
                 _lazy("jetstream", "consumer_ls"))
    p.add_argument("stream", help="the stream's name")
    options(p)
    p = _command(consumer_commands, "info", "a consumer's configuration and state",
                 "Describe one consumer (CONSUMER.INFO): its configuration (delivery, acks, limits) and its state "
                 "(last delivery, ack floor, pending, redelivered).",
                 ["eventsvc consumer info --config patch.toml ORDERS processor",
                  "eventsvc consumer info --config patch.toml --json ORDERS processor"],
                 _lazy("jetstream", "consumer_info"))
    p.add_argument("stream", help="the stream's name")
    p.add_argument("consumer", help="the consumer's name")
    options(p)


def main(argv: Optional[Sequence[str]] = None) -> int:
    options = parser().parse_args(argv)
    if getattr(options, "timeout", None) is not None:
        socket.setdefaulttimeout(options.timeout)
    return options.run(options)  # type: ignore[no-any-return]
