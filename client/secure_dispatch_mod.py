"""A ClientApp mod that hands each train message to the secure aggregation
protocol it belongs to: ours (`client.secure_agg_mod`, record `secure-agg`)
or Flower's SecAgg+ (`secaggplus_mod`, record `secaggplus_configs`).

The server chooses the protocol (run config `secure-aggregation`); a site
follows it. A train message that carries neither protocol's record, or both,
is refused: a site never sends an unmasked update, whatever the server asks.
Other messages (properties, evaluate) pass through.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.app.message_type import MessageType
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

from client.secure_agg_mod import SecureAggRefusal, secure_agg_mod
from common.secure_agg import protocol as p


def secure_dispatch_mod(
    msg: Message, ctxt: Context, call_next: ClientAppCallable
) -> Message:
    """Run a train message through the secure protocol its records name."""
    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, ctxt)
    records = msg.content.config_records
    ours, stock = p.RECORD in records, RECORD_KEY_CONFIGS in records
    if ours and stock:
        raise SecureAggRefusal(
            "a train message naming two secure aggregation protocols"
        )
    if ours:
        return secure_agg_mod(msg, ctxt, call_next)
    if stock:
        return secaggplus_mod(msg, ctxt, call_next)
    raise SecureAggRefusal(
        "a train message outside secure aggregation: this node sends its update "
        "only masked (server: SecAgg+ or our protocol, see secure-aggregation)"
    )
