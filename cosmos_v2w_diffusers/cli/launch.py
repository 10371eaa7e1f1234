r"""`accelerate launch` for one node of a several-node job, with the checks accelerate leaves out:

    python -m cosmos_v2w_diffusers.launch --config_file accelerate_configs/fsdp_multinode.yaml --machine_rank 1 \
        train_video2world.py --model 14B --dataset_path datasets/my_robot --context_parallel_size 4

It takes `accelerate launch`'s arguments unchanged and hands them to it, after refusing in one line what accelerate
would wait on: a `--machine_rank` outside `0..num_machines-1` (accelerate starts it, and it waits for a rendezvous
that never completes), and, on a node other than the main one, a main process address that does not answer
within `--main_process_wait` seconds (accelerate waits 15 minutes for it, then prints a traceback). One node, or
`torchrun` with its c10d rendezvous, needs none of this.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time

# How long a node waits for the main node's launcher to listen: nodes of a job are rarely started at one instant.
DEFAULT_MAIN_PROCESS_WAIT = 300.0


def node_settings(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """accelerate's own launch arguments, with the config file's values where a flag is not given (as accelerate
    merges them), and the remaining argv without our `--main_process_wait`."""
    from accelerate.commands.config.config_args import default_config_file, load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    ours = argparse.ArgumentParser(add_help=False)
    ours.add_argument("--main_process_wait", type=float, default=DEFAULT_MAIN_PROCESS_WAIT)
    wait, rest = ours.parse_known_args(argv)
    args, _ = launch_command_parser().parse_known_args(rest)
    config_file = args.config_file or (default_config_file if os.path.isfile(default_config_file) else None)
    config = load_config_from_file(config_file) if config_file else None
    for name, default in (("num_machines", 1), ("machine_rank", 0), ("main_process_ip", None)):
        if getattr(args, name) is None:
            setattr(args, name, getattr(config, name, default) if config else default)
    if args.main_process_port is None:
        args.main_process_port = getattr(config, "main_process_port", None) or 29500
    args.main_process_wait = wait.main_process_wait
    return args, rest


def check_node(args: argparse.Namespace) -> None:
    """Refuse a node that could never join its job; raises ValueError with the one line to print."""
    if not 0 <= args.machine_rank < args.num_machines:
        raise ValueError(
            f"--machine_rank {args.machine_rank} with --num_machines {args.num_machines}: the ranks are 0 to "
            f"{args.num_machines - 1}, one a node; give each node its own."
        )
    if args.num_machines == 1 or args.machine_rank == 0:
        return
    if not args.main_process_ip:
        raise ValueError(
            "--main_process_ip is not set: pass the address of the node with --machine_rank 0 (or set it in the "
            "accelerate config)."
        )
    address = (args.main_process_ip, int(args.main_process_port))
    deadline = time.monotonic() + args.main_process_wait
    while True:
        try:
            with socket.create_connection(address, timeout=5):
                return
        except OSError:
            if time.monotonic() >= deadline:
                raise ValueError(
                    f"The main process at {address[0]}:{address[1]} did not answer within {args.main_process_wait:g} "
                    f"s (--main_process_wait): start the node with --machine_rank 0, and check --main_process_ip, "
                    f"--main_process_port and the firewall between the nodes."
                ) from None
            time.sleep(1)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if {"-h", "--help"} & set(argv):  # ours first, then accelerate's own arguments
        print(f"{__doc__}\n  --main_process_wait SECONDS  (default {DEFAULT_MAIN_PROCESS_WAIT:g})\n")
    try:
        args, rest = node_settings(argv)
        check_node(args)
    except ValueError as exc:
        sys.exit(f"error: {exc}")
    os.execv(sys.executable, [sys.executable, "-m", "accelerate.commands.launch", *rest])


if __name__ == "__main__":
    main()
