"""Phase iii: booking the OMS outbox into holdings and settling to the back office.

``run_booking`` runs booking workers and a settlement relay until stopped or idle;
``print_report`` prints what they did. ``workload.booking.checks`` adds the phase's
invariants to ``verify``.
"""

from workload.booking.booker import DEAD_LETTER_REASONS, Booker, BookingOutcome
from workload.booking.money import Fees, cash_move, cash_rounded
from workload.booking.runner import BookingOptions, BookingReport, print_report, run_booking
from workload.booking.settlement import DEFAULT_SETTLEMENT_TOPIC, SettlementRelay

__all__ = [
    "DEAD_LETTER_REASONS",
    "DEFAULT_SETTLEMENT_TOPIC",
    "Booker",
    "BookingOptions",
    "BookingOutcome",
    "BookingReport",
    "Fees",
    "SettlementRelay",
    "cash_move",
    "cash_rounded",
    "print_report",
    "run_booking",
]
