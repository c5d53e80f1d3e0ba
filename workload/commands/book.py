"""``book``: the OMS books completed allocations into holdings and settles them (phase iii)."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from decimal import Decimal, InvalidOperation

from workload.booking import BookingOptions, print_report, run_booking
from workload.booking.settlement import DEFAULT_SETTLEMENT_TOPIC
from workload.endpoints import resolve
from workload.settings import Settings, parse_duration

ORDER = 75


def _fee(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value.is_finite() or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fee: give a number >= 0")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def register(commands, common) -> None:
    defaults = BookingOptions()
    parser = commands.add_parser(
        "book",
        parents=[common["connection"]],
        help="book completed allocations into holdings and publish settlements",
        description="Consume the OMS outbox: for every completed block order, move each "
        "account's position by its allocated quantity and its cash by quantity x price "
        "(rounded half-even to 4 places, fees added), record the booking, and publish a "
        "settlement instruction to a Kafka topic through a settlement table (never lost; a "
        "duplicate now and then, keyed by settlement id). Booking twice changes nothing. "
        "Allocations that cannot be booked (account gone, sell above the position, not "
        "enough cash once the request's sells are booked) go to "
        "allocations.booking_dead_letters. Runs until Ctrl-C / SIGTERM, or --until-idle.",
    )
    parser.add_argument(
        "--batch-size", type=_positive_int, default=defaults.batch_size, metavar="N",
        help=f"block orders claimed per transaction (default {defaults.batch_size})",
    )  # fmt: skip
    parser.add_argument(
        "--workers", type=_positive_int, default=defaults.workers, metavar="K",
        help="concurrent booking workers (default 1); several processes are safe too",
    )  # fmt: skip
    parser.add_argument(
        "--poll-interval", type=parse_duration, default=defaults.poll_interval, metavar="TIME",
        help=f"how long a worker waits when nothing is left (default {defaults.poll_interval:g}s)",
    )  # fmt: skip
    parser.add_argument(
        "--fee-rate", type=_fee, default=defaults.fee_rate, metavar="RATE",
        help="fee as a fraction of each booking's amount, e.g. 0.0005 (default 0)",
    )  # fmt: skip
    parser.add_argument(
        "--fee-per-share", type=_fee, default=defaults.fee_per_share, metavar="AMOUNT",
        help="fee per share booked, e.g. 0.005 (default 0)",
    )  # fmt: skip
    parser.add_argument(
        "--until-idle", type=parse_duration, metavar="TIME",
        help="stop once nothing was booked or published for TIME (e.g. 5s)",
    )  # fmt: skip
    parser.add_argument(
        "--max-duration", type=parse_duration, metavar="TIME",
        help="stop after TIME whatever is left (e.g. 5m)",
    )  # fmt: skip
    parser.add_argument(
        "--settlement-topic", default=DEFAULT_SETTLEMENT_TOPIC, metavar="NAME",
        help=f"Kafka topic of settlement instructions (default {DEFAULT_SETTLEMENT_TOPIC}; "
        "created if missing)",
    )  # fmt: skip
    parser.set_defaults(handler=run)


def options_from(args) -> BookingOptions:
    return BookingOptions(
        batch_size=args.batch_size,
        workers=args.workers,
        poll_interval=args.poll_interval,
        fee_rate=args.fee_rate,
        fee_per_share=args.fee_per_share,
        until_idle=args.until_idle,
        max_seconds=args.max_duration,
        settlement_topic=args.settlement_topic,
    )


def run(args, settings: Settings) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    options = options_from(args).validate()
    endpoints = resolve(settings, need_kafka=True)
    # A signal stops the run like --until-idle does: the workers finish their transaction,
    # the relay publishes what they booked, and the report is printed.
    stop = threading.Event()
    previous = {
        signum: signal.signal(signum, lambda *_: stop.set())
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        report = run_booking(endpoints.url_for("booker"), endpoints.kafka_bootstrap, options, stop)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    print_report(report)
    return 0
