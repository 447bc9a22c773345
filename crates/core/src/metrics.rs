//! The pipeline's and delivery's metric names (the `sidelog` crate describes and serves them
//! with the rest).

/// Messages received, by door (grpc, http, mqtt) and outcome: accepted, duplicate, rejected.
pub const MESSAGES: &str = "sidelog_messages_total";
/// Journal entries dispatched again by a replay, by kind: input (to the handler) or output.
pub const REPLAYED: &str = "sidelog_replayed_entries_total";
/// 1 while the sink's last delivery (or the check at start) succeeded, 0 once one failed.
pub const SINK_UP: &str = "sidelog_sink_up";
/// Messages delivered to the sink (acked by it).
pub const DELIVERED: &str = "sidelog_delivered_total";
/// Delivery batches retried.
pub const DELIVERY_RETRIES: &str = "sidelog_delivery_retries_total";
/// Entries moved to the dead-letter table.
pub const DEAD_LETTERED: &str = "sidelog_dead_lettered_total";
/// Seconds a sink delivery attempt took, by outcome: ok, error (timeouts included).
pub const SINK_DELIVER_SECONDS: &str = "sidelog_sink_deliver_seconds";
/// Seconds a handler call took, by outcome: ok, refused, error (timeouts included); only
/// with a handler (pass-through makes no calls).
pub const HANDLER_CALL_SECONDS: &str = "sidelog_handler_call_seconds";
/// What may reach the next tier twice, by cause: retry (messages of a failed or unanswered
/// batch, sent again) or replay (journal entries dispatched again after a restart; a replayed
/// input goes through the handler again).
pub const RESENT: &str = "sidelog_resent_messages_total";
