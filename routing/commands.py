"""``bmrgw endpoints …``: the operator's view and edits of the endpoint table (SPEC.md "CLI").

``list``, ``show`` and ``check`` read endpoints.yaml exactly as the gateway
does.  ``add``, ``set`` and ``remove`` go through :mod:`routing.edit`, which
validates the whole new file, keeps the operator's comments and layout and
replaces the file atomically, so a running gateway applies the change within
2 s, without a restart.  Exit codes follow ``gateway.cli``: 0 done, 1 failed
(e.g. no such endpoint to show), 2 bad usage or an invalid configuration or edit.
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.errors import UnknownDestination
from gateway.terminal import ConfigOption, table

from .config import Config, Endpoint, MailboxEndpoint, PeerEndpoint, UrlEndpoint, load_config
from .edit import Outcome, Target, delete_endpoint, edit_file, insert_endpoint, set_disabled, update_endpoint
from .outbound import Outbound
from .table import RouteTable

__all__ = ["add_endpoints_command"]


if TYPE_CHECKING:  # generic only in typeshed, not at run time
    Actions = argparse._SubParsersAction[argparse.ArgumentParser]

_DESCRIPTION = """\
Read and edit the endpoint table of endpoints.yaml: for each business-AP
name, where the gateway sends its messages -- a SOAP URL (url), or a peer
gateway that holds it (via).

Edits check the whole file before anything is written, keep its comments
and layout, and replace it atomically; a running gateway applies them within
2 s, without a restart or a dropped request.  An edit that would make the
file invalid is refused and the file stays exactly as it was.  Two edits at
the same time are serialised by a lock file next to the config file."""

_EXAMPLES = """\
examples:
  bmrgw endpoints list
  bmrgw endpoints show kaigo
  bmrgw endpoints add kaigo --url http://10.1.2.3:9001/kaigo --timeout 20
  bmrgw endpoints add juki-west --via dc-west
  bmrgw endpoints set kaigo --url https://10.1.2.4/kaigo
  bmrgw endpoints remove kaigo
  bmrgw endpoints reset kaigo
  bmrgw endpoints disable kaigo      (maintenance: answered EndpointUnavailable at once)
  bmrgw endpoints enable kaigo
  bmrgw endpoints check --config /etc/bmrgw/endpoints.yaml"""


def add_endpoints_command(commands: Any, config_option: ConfigOption) -> None:
    """Register ``bmrgw endpoints …`` on the top-level sub-command set."""
    parser = commands.add_parser(
        "endpoints", help="read and edit the endpoint table (business-AP name -> URL or peer)",
        description=_DESCRIPTION, epilog=_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(run=lambda args: _usage(parser))
    actions = parser.add_subparsers(title="actions", metavar="ACTION")
    for register in (_add_list, _add_show, _add_add, _add_set, _add_remove, _add_check, _add_reset, _add_switch):
        register(actions, config_option)
    _add_schema(actions)


def _add_schema(actions: Actions) -> None:
    p = actions.add_parser(
        "schema", help="print the JSON Schema of endpoints.yaml (or --markdown: every key, its default, its meaning)",
        description="Print the JSON Schema of endpoints.yaml, generated from the config classes (the same file "
        "ships as schemas/endpoints.schema.json, for editors: see README \"Configuration\"). --markdown prints "
        "the reference table of every key with its default instead.")
    p.add_argument("--markdown", action="store_true", help="the reference table instead of the schema")
    p.set_defaults(run=_schema)


def _schema(args: argparse.Namespace) -> int:
    from .schema import endpoints_schema, reference_markdown

    print(reference_markdown() if args.markdown else json.dumps(endpoints_schema(), indent=2, ensure_ascii=False),
          end="" if args.markdown else "\n")
    return 0


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


# -- the parsers -------------------------------------------------------------------


def _add_list(actions: Actions, config_option: ConfigOption) -> None:
    p = actions.add_parser(
        "list", help="show every endpoint, the peer gateways and the fallback peer",
        description="Show every endpoint in file order: its name, its kind (url: the gateway posts "
        "to the business AP's SOAP URL; via: it forwards to a peer gateway), the target (URL or "
        "peer) and how long the gateway waits for an answer; then the peer gateways and the "
        "fallback peer that receives names not in the table.",
    )
    config_option(p)
    p.add_argument("--format", choices=["table", "json"], default="table",
                   help="an aligned table for people (default), or JSON for scripts")
    p.set_defaults(run=_list)


def _add_show(actions: Actions, config_option: ConfigOption) -> None:
    p = actions.add_parser(
        "show", help="show one endpoint and the URL its messages are posted to",
        description="Show one endpoint: its kind, the URL the gateway posts its messages to (for a "
        "via endpoint, <peer url>/NAME on the peer gateway) and the timeout. Exit status 1 when "
        "there is no such endpoint.",
    )
    config_option(p)
    p.add_argument("name", metavar="NAME", help="business-AP name, as in the message's <r:To>")
    p.add_argument("--format", choices=["text", "json"], default="text",
                   help="text for people (default), or JSON for scripts")
    p.set_defaults(run=_show)


def _add_add(actions: Actions, config_option: ConfigOption) -> None:
    p = actions.add_parser(
        "add", help="add an endpoint",
        description="Add a business AP to the endpoint table, after the last endpoint. Give its SOAP "
        "URL (--url), or the peer gateway that holds it (--via, a name under 'peers:'). Refused, "
        "with the file unchanged, if NAME exists already or the result would be invalid.",
    )
    config_option(p)
    p.add_argument("name", metavar="NAME",
                   help="the new business-AP name: letters, digits, '.', '_', '-' (at most 64)")
    _target_options(p, required=True)
    p.set_defaults(run=_add)


def _add_set(actions: Actions, config_option: ConfigOption) -> None:
    p = actions.add_parser(
        "set", help="change an endpoint's URL, peer or timeout",
        description="Change an existing endpoint in place; what you do not give stays as it is. "
        "--url on a via endpoint, or --via on a url endpoint, changes its kind (a via endpoint "
        "drops its timeout: it waits as long as its peer's timeout says). Relocating a business "
        "AP is this one command; its clients change nothing.",
    )
    config_option(p)
    p.add_argument("name", metavar="NAME", help="the business-AP name to change")
    _target_options(p, required=False)
    p.add_argument("--no-failover", action="store_true",
                   help="with one --url: replace a failover list by that URL (refused without it)")
    p.set_defaults(run=lambda args: _set(args, p))


def _add_remove(actions: Actions, config_option: ConfigOption) -> None:
    p = actions.add_parser(
        "remove", help="remove an endpoint",
        description="Remove an endpoint, with the comment lines directly above it. Messages for "
        "NAME are then refused with UnknownDestination, or sent to gateway.fallback_peer if set.",
    )
    config_option(p)
    p.add_argument("name", metavar="NAME", help="the business-AP name to remove")
    p.set_defaults(run=_remove)


def _add_check(actions: Actions, config_option: ConfigOption) -> None:
    p = actions.add_parser(
        "check", help="validate the config file without changing it",
        description="Validate the config file as the gateway reads it and print a one-line "
        "summary. Exit status 0 when it is valid; 2, with the first problem and where it is "
        "(e.g. endpoints.kaigo.url), when it is not. Run it after editing the file by hand: "
        "a running gateway keeps its old table while the file is invalid.",
    )
    config_option(p)
    p.set_defaults(run=_check)


def _add_reset(actions: Actions, config_option: ConfigOption) -> None:
    p = actions.add_parser(
        "reset", help="close the circuits of an endpoint or peer on every running gateway",
        description="Close the circuit breakers of NAME's URLs (an endpoint or a peer) on every "
        "gateway process that shares this config's store, so messages go to it again at once "
        "instead of after the back-off. The request travels through the store; the command waits "
        "up to 5 s to see it applied. Exit status 0 when no process reports NAME's circuits open, "
        "1 when one still does.",
    )
    config_option(p)
    p.add_argument("name", metavar="NAME", help="the endpoint or peer whose circuits to close")
    p.set_defaults(run=_reset)


def _add_switch(actions: Actions, config_option: ConfigOption) -> None:
    for action, verb in (("disable", "take an endpoint out of service"), ("enable", "put it back in service")):
        p = actions.add_parser(
            action, help=f"{verb} (endpoints.NAME.disabled)",
            description="Disable: write 'disabled: true' on endpoint NAME, so that every running gateway "
            "answers its messages with EndpointUnavailable at once, without calling it (maintenance of the "
            "business AP); applied within 2 s like every edit. Enable: remove the key again. Exit status 1 "
            "when there is no such endpoint.",
        )
        config_option(p)
        p.add_argument("name", metavar="NAME", help="the business-AP name")
        p.set_defaults(run=functools.partial(_switch, disabled=action == "disable"))


def _target_options(p: argparse.ArgumentParser, *, required: bool) -> None:
    kind = p.add_mutually_exclusive_group(required=required)
    kind.add_argument("--url", metavar="URL", action="append",
                      help="the business AP's SOAP endpoint, an http:// or https:// URL; repeat it for a "
                      "failover list, tried in the order given")
    kind.add_argument("--via", metavar="PEER",
                      help="the peer gateway (a name under 'peers:') that holds this business AP; "
                      "messages go to <peer url>/NAME")
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="seconds to wait for the business AP to answer (url endpoints only; default 30)")


# -- reading -----------------------------------------------------------------------


def _list(args: argparse.Namespace) -> int:
    from gateway.serve import control

    config = load_config(args.config)
    if args.format == "json":
        circuits, error = control.circuit_listing(config)
        print(json.dumps({**_listing(config), "circuits": circuits, "circuits_error": error}, indent=2))
    else:
        print("\n".join([*_list_lines(config), "", *control.circuit_lines(config)]))
    return 0


def _reset(args: argparse.Namespace) -> int:
    from gateway.serve import control

    return control.reset(load_config(args.config), args.name)


def _show(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    facts = _facts(config, args.name)
    if args.format == "json":
        print(json.dumps(facts, indent=2))
    else:
        print("\n".join(_text_facts(facts)))
    return 0


def _check(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    summary = [_count(len(config.endpoints), "endpoint"), _count(len(config.peers), "peer")]
    if config.gateway.fallback_peer:
        summary.append(f"fallback peer {config.gateway.fallback_peer}")
    print(f"{args.config}: OK \N{EM DASH} {', '.join(summary)}")
    return 0


def _list_lines(config: Config) -> list[str]:
    routes = RouteTable(config)
    endpoints = [_endpoint_row(ep, routes, ep.name in config.disabled) for ep in config.endpoints.values()]
    peers = [[p.name, " ".join(p.failover), _seconds(p.timeout)] for p in config.peers.values()]
    lines = table(["NAME", "KIND", "TARGET", "TIMEOUT"], endpoints) if endpoints else ["no endpoints"]
    lines += [""] + (table(["PEER", "URL", "TIMEOUT"], peers) if peers else ["no peers"])
    fallback = config.gateway.fallback_peer
    lines += ["", f"fallback peer: {fallback} (names not listed above go there)" if fallback
              else "fallback peer: none (names not listed above are refused: UnknownDestination)"]
    return lines


def _endpoint_row(ep: Endpoint, routes: RouteTable, disabled: bool) -> list[str]:
    row = _kind_row(ep, routes)
    return [row[0], row[1] + (" (disabled)" if disabled else ""), *row[2:]]


def _kind_row(ep: Endpoint, routes: RouteTable) -> list[str]:
    timeout = _seconds(routes.resolve(ep.name).timeout)
    if isinstance(ep, PeerEndpoint):
        return [ep.name, "via", ep.via, timeout]
    if isinstance(ep, MailboxEndpoint):
        return [ep.name, "mailbox", f"JX receiver {ep.mailbox}", "-"]
    return [ep.name, "url", " ".join(ep.failover), timeout]


def _listing(config: Config) -> dict[str, Any]:
    return {
        "config": str(config.source),
        "endpoints": [_facts(config, name) for name in config.endpoints],
        "peers": [{"name": p.name, "url": p.url, "timeout": p.timeout} for p in config.peers.values()],
        "fallback_peer": config.gateway.fallback_peer,
    }


def _facts(config: Config, name: str) -> dict[str, Any]:
    """What the gateway does with messages for ``name``, as plain data."""
    ep = config.endpoints.get(name)
    if ep is None:
        raise UnknownDestination(_unknown(config, name), destination=name)
    route = RouteTable(config).resolve(name)
    if isinstance(ep, MailboxEndpoint):
        return {"name": name, "kind": "mailbox", "mailbox": ep.mailbox, "disabled": name in config.disabled}
    facts: dict[str, Any] = {"name": name, "kind": "via" if isinstance(ep, PeerEndpoint) else "url",
                             "disabled": name in config.disabled}
    if isinstance(ep, PeerEndpoint):
        facts["via"] = ep.via
    facts.update(posts_to=route.url, timeout=route.timeout)
    if isinstance(ep, UrlEndpoint) and len(ep.failover) > 1:
        facts["fails_over_to"] = list(ep.failover[1:])
    security = _security_facts(route.outbound)
    if security:
        facts["security"] = security
    if isinstance(ep, UrlEndpoint) and ep.charset is not None:
        profile = ep.charset
        facts["charset"] = {"encoding": profile.encoding, "label": profile.label, "unmappable": profile.unmappable,
                            "reduce": profile.reduce,
                            "gaiji": str(profile.gaiji.source) if profile.gaiji is not None else None,
                            "gaiji_mappings": len(profile.gaiji.to_partner) if profile.gaiji is not None else 0}
    return facts


def _security_facts(outbound: Outbound) -> dict[str, str]:
    """How the gateway verifies and authenticates to the next hop (never a password)."""
    facts = {"trusts": outbound.ca, "client cert": outbound.cert,
             "signs with": outbound.wss_sign.cert if outbound.wss_sign else None}
    shown = {key: str(value) for key, value in facts.items() if value is not None}
    if outbound.basic is not None:
        shown["basic"] = f"user {outbound.basic.user}, password from {outbound.basic.source}"
    return shown


def _text_facts(facts: dict[str, Any]) -> list[str]:
    if facts["kind"] == "mailbox":
        return [f"name:    {facts['name']}", "kind:    mailbox (stored as a JX document until polled)",
                f"mailbox: {facts['mailbox']}"]
    via = facts.get("via")
    pairs = [("name", facts["name"]),
             ("kind", f"via (held by peer gateway {via})" if via else "url (a business AP's SOAP service)")]
    if via:
        pairs.append(("peer", via))
    pairs.append(("posts to", facts["posts_to"]))
    pairs += [("then to", url) for url in facts.get("fails_over_to", [])]
    pairs.append(("timeout", _seconds(facts["timeout"]) + (" (the peer's)" if via else "")))
    if facts["disabled"]:
        pairs.append(("state", f"disabled: answered EndpointUnavailable (bmrgw endpoints enable {facts['name']})"))
    pairs += list(facts.get("security", {}).items())
    pairs += _charset_pairs(facts.get("charset"))
    width = max(len(key) for key, _ in pairs) + 1
    return [f"{key + ':':<{width}} {value}" for key, value in pairs]


def _charset_pairs(charset: dict[str, Any] | None) -> list[tuple[str, str]]:
    if charset is None or charset["encoding"] == "utf-8":
        return [] if charset is None else [("charset", "utf-8 (bodies travel unchanged)")]
    pairs = [("charset", f"{charset['encoding']} ({charset['label']}); unmappable: {charset['unmappable']}; "
                         f"reduce: {charset['reduce'] or 'none'}")]
    if charset["gaiji"] is not None:
        pairs.append(("gaiji", f"{charset['gaiji']} ({_count(charset['gaiji_mappings'], 'mapping')})"))
    return pairs


def _unknown(config: Config, name: str) -> str:
    message = f"no endpoint named {name!r} in {config.source}"
    if name in config.peers:
        return f"{message}; {name!r} is a peer gateway (see 'bmrgw endpoints list')"
    fallback = config.gateway.fallback_peer
    if fallback:
        return f"{message}; the gateway sends messages for it to fallback peer {fallback!r}"
    return message


# -- editing -----------------------------------------------------------------------


def _target(args: argparse.Namespace) -> Target:
    first, *rest = args.url or [None]
    return Target(url=first, failover=tuple(rest), via=args.via, timeout=args.timeout,
                  drop_failover=getattr(args, "no_failover", False))


def _add(args: argparse.Namespace) -> int:
    target = _target(args)
    outcome = edit_file(args.config, lambda doc: insert_endpoint(doc, args.name, target))
    print(f"added {args.name} -> {_describe(outcome.after, args.name)}")
    return _written(args.config, outcome)


def _set(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    target = _target(args)
    if target.url is None and target.via is None and target.timeout is None:
        parser.error("nothing to change: give --url, --via or --timeout")
    outcome = edit_file(args.config, lambda doc: update_endpoint(doc, args.name, target))
    before, after = _describe(outcome.before, args.name), _describe(outcome.after, args.name)
    print(f"changed {args.name}: {before} -> {after}" if outcome.written
          else f"{args.name} already is {after}")
    return _written(args.config, outcome)


def _remove(args: argparse.Namespace) -> int:
    outcome = edit_file(args.config, lambda doc: delete_endpoint(doc, args.name))
    print(f"removed {args.name} (was {_describe(outcome.before, args.name)})")
    return _written(args.config, outcome)


def _switch(args: argparse.Namespace, *, disabled: bool) -> int:
    outcome = edit_file(args.config, lambda doc: set_disabled(doc, args.name, disabled))
    state = "disabled: its messages are answered EndpointUnavailable" if disabled else "enabled"
    print(f"{args.name} {state}" if outcome.written else f"{args.name} already {'disabled' if disabled else 'enabled'}")
    return _written(args.config, outcome)


def _written(path: Path, outcome: Outcome) -> int:
    if outcome.written:
        print(f"{path} updated; a running gateway applies the change within 2 s")
    else:
        print(f"{path} left as it was")
    return 0


def _describe(config: Config, name: str) -> str:
    ep = config.endpoints[name]
    if isinstance(ep, UrlEndpoint):
        return f"{' then '.join(ep.failover)}, timeout {_seconds(ep.timeout)}"
    if isinstance(ep, MailboxEndpoint):
        return f"mailbox {ep.mailbox}"
    return f"via {ep.via} ({RouteTable(config).resolve(name).url})"


# -- formatting --------------------------------------------------------------------


def _seconds(value: float) -> str:
    return f"{value:g} s"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
