"""`helm` for the README test: the commands the README uses (install, upgrade, uninstall, test, status), run by the
real Helm v4 engine (helm-python-sdk) against the cluster in KUBECONFIG. `--set` goes through Helm's own strvals
parser. This machine has no `helm` binary and no registry, so only local chart paths are accepted; the values in
the environment's PDSO_HELM_SET (`--set` syntax, applied after the command line's) point the image at a local
build, the one thing the README test changes."""

import argparse
import os
import sys

import helm_python as helm


def merge(into, new):
    """Helm's order: later `--set`s win, maps merge key by key, list entries by index."""
    if isinstance(into, dict) and isinstance(new, dict):
        for k, v in new.items():
            into[k] = merge(into[k], v) if k in into else v
        return into
    if isinstance(into, list) and isinstance(new, list):
        out = list(into) + [None] * max(0, len(new) - len(into))
        for i, v in enumerate(new):
            if v is not None:
                out[i] = merge(out[i], v) if out[i] is not None else v
        return out
    return new


def values(args):
    vals = {}
    for expr in args.set or []:
        vals = merge(vals, helm.parse_set_string(expr))
    for expr in args.set_string or []:
        vals = merge(vals, helm.parse_set_string_values(expr))
    extra = os.environ.get("PDSO_HELM_SET")
    if extra:
        vals = merge(vals, helm.parse_set_string(extra))
    return vals


def main(argv):
    p = argparse.ArgumentParser(prog="helm")
    p.add_argument("command", choices=["install", "upgrade", "uninstall", "test", "status"])
    p.add_argument("release")
    p.add_argument("chart", nargs="?")
    p.add_argument("-n", "--namespace", default="default")
    p.add_argument("--set", action="append")
    p.add_argument("--set-string", action="append")
    p.add_argument("--reuse-values", action="store_true")
    p.add_argument("--create-namespace", action="store_true")
    p.add_argument("--timeout", type=int, default=300, help="seconds")
    p.add_argument("--logs", action="store_true")
    args = p.parse_args(argv)
    with helm.Config(kubeconfig_path=os.environ["KUBECONFIG"], namespace=args.namespace) as config:
        if args.command == "install":
            out = config.install(args.chart, args.release, values(args), namespace=args.namespace,
                                 create_namespace=args.create_namespace, timeout=args.timeout)
        elif args.command == "upgrade":
            out = config.upgrade(args.chart, args.release, values(args), namespace=args.namespace,
                                 reuse_values=args.reuse_values, timeout=args.timeout)
        elif args.command == "uninstall":
            out = config.uninstall(args.release, timeout=args.timeout, wait="watcher")
        elif args.command == "test":
            out = config.test(args.release, timeout=args.timeout, logs=args.logs)
        else:
            out = config.status(args.release)
    summary = out.get("release", out)
    print(f"NAME: {args.release}\nNAMESPACE: {args.namespace}\nSTATUS: {summary.get('status')}")
    if summary.get("notes") and args.command in ("install", "upgrade"):
        print(f"NOTES:\n{summary['notes']}")
    if args.command == "test" and isinstance(out, dict) and out.get("logs"):
        print(out["logs"])


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except helm.HelmError as e:
        print(f"Error: {e}", file=sys.stderr)
        sys.exit(1)
