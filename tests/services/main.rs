//! Tests that need more than a Rust toolchain: Apache Kafka (Java, and its jars from Maven
//! Central: `kafka/fetch.sh`), a NATS server with JetStream, `moto_server` (an
//! S3-compatible server from PyPI), Mosquitto and its clients (the MQTT door), Chromium and
//! chromedriver (the browser demo), `curl` and `python3` (the HTTP door as shippers and scripts
//! reach it), the OpenTelemetry Python SDK and Collector (the OTLP door; the Collector is
//! built with Go), Fluentd's
//! `fluent-logger` for Node.js and Python (the forward door), a small tmpfs, and FUSE (for the
//! power-loss test). `.ci/run` provides all of them.
//!
//! Each test says what it misses by returning [`Missing`]. On a machine without the service the
//! test is reported *ignored* with that reason, so `cargo test` shows every skip in its summary.
//! With `SIDELOG_TEST_SERVICES=required` (set by `.ci/run`) a missing service fails the test
//! instead: CI never passes a test that did not run.

mod browser;
#[path = "../common/mod.rs"]
mod common;
mod disk_full;
mod forward;
mod kafka;
mod mqtt;
mod nats;
mod object;
mod otlp;
mod power_loss;
mod s3_proxy;
mod shippers;

use std::future::Future;

use libtest_mimic::{Arguments, Completion, Failed, Trial};

/// What a test needed and did not find.
#[derive(Debug)]
pub struct Missing(pub String);

/// A test's end: it ran (its assertions panic on failure), or it lacked a service.
pub type Outcome = Result<(), Missing>;

/// Set to `required` so that a missing service fails instead of being skipped.
const POLICY: &str = "SIDELOG_TEST_SERVICES";

fn trial<F, Fut>(name: &str, test: F) -> Trial
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Outcome>,
{
    Trial::ignorable_test(name, move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| Failed::from(format!("cannot start a runtime: {e}")))?;
        match runtime.block_on(test()) {
            Ok(()) => Ok(Completion::Completed),
            Err(Missing(reason)) if std::env::var(POLICY).is_ok_and(|v| v == "required") => Err(
                Failed::from(format!("{reason}; {POLICY}=required, so this fails")),
            ),
            Err(Missing(reason)) => Ok(Completion::ignored_with(reason)),
        }
    })
}

fn main() {
    let args = Arguments::from_args();
    let trials = vec![
        trial(
            "forward::the_node_client_with_acks_through_a_sigkill",
            forward::the_node_client_with_acks_through_a_sigkill,
        ),
        trial(
            "forward::the_python_client_is_read_right",
            forward::the_python_client_is_read_right,
        ),
        trial(
            "forward::the_python_client_through_a_sigkill",
            forward::the_python_client_through_a_sigkill,
        ),
        trial(
            "otlp::the_python_sdks_grpc_exporter_through_a_sigkill",
            otlp::the_python_sdks_grpc_exporter_through_a_sigkill,
        ),
        trial(
            "otlp::the_python_sdks_http_exporter_through_a_sigkill",
            otlp::the_python_sdks_http_exporter_through_a_sigkill,
        ),
        trial(
            "otlp::the_collector_delivers_through_a_sigkill",
            otlp::the_collector_delivers_through_a_sigkill,
        ),
        trial(
            "kafka::sigkills_and_a_broker_restart_leave_every_acked_message_once",
            kafka::sigkills_and_a_broker_restart_leave_every_acked_message_once,
        ),
        trial(
            "kafka::without_progress_records_the_same_crashes_leave_duplicates",
            kafka::without_progress_records_the_same_crashes_leave_duplicates,
        ),
        trial(
            "kafka::a_second_sidecar_with_the_same_transactional_id_fences_the_first",
            kafka::a_second_sidecar_with_the_same_transactional_id_fences_the_first,
        ),
        trial(
            "kafka::tls_and_sasl_reach_a_secured_broker_and_a_wrong_password_is_named",
            kafka::tls_and_sasl_reach_a_secured_broker_and_a_wrong_password_is_named,
        ),
        trial(
            "kafka::a_cluster_down_at_start_holds_delivery_not_the_start",
            kafka::a_cluster_down_at_start_holds_delivery_not_the_start,
        ),
        trial(
            "kafka::a_missing_topic_fails_the_start_and_a_record_too_large_is_dead_lettered",
            kafka::a_missing_topic_fails_the_start_and_a_record_too_large_is_dead_lettered,
        ),
        trial(
            "nats::sigkill_during_delivery_leaves_every_acked_message_in_the_stream_once",
            nats::sigkill_during_delivery_leaves_every_acked_message_in_the_stream_once,
        ),
        trial(
            "object::sigkills_during_uploads_lose_nothing_and_every_object_is_whole",
            object::sigkills_during_uploads_lose_nothing_and_every_object_is_whole,
        ),
        trial(
            "object::a_lost_upload_answer_is_checked_with_head_and_nothing_is_stored_twice",
            object::a_lost_upload_answer_is_checked_with_head_and_nothing_is_stored_twice,
        ),
        trial(
            "object::a_failed_part_aborts_the_multipart_upload",
            object::a_failed_part_aborts_the_multipart_upload,
        ),
        trial(
            "object::a_missing_bucket_is_reported_at_start",
            object::a_missing_bucket_is_reported_at_start,
        ),
        trial(
            "nats::a_subject_without_a_stream_is_reported_at_start",
            nats::a_subject_without_a_stream_is_reported_at_start,
        ),
        trial(
            "object::a_large_chunk_is_uploaded_in_parts_and_read_back_whole",
            object::a_large_chunk_is_uploaded_in_parts_and_read_back_whole,
        ),
        trial(
            "object::parquet_objects_hold_every_acked_message_across_a_sigkill",
            object::parquet_objects_hold_every_acked_message_across_a_sigkill,
        ),
        trial(
            "mqtt::mqtt_messages_survive_sigkills_of_sidelog",
            mqtt::mqtt_messages_survive_sigkills_of_sidelog,
        ),
        trial(
            "mqtt::mqtt_ids_dedup_broker_restarts_and_bad_messages_are_dead_lettered",
            mqtt::mqtt_ids_dedup_broker_restarts_and_bad_messages_are_dead_lettered,
        ),
        trial(
            "mqtt::paho_devices_through_a_sigkill_and_a_malformed_payload",
            mqtt::paho_devices_through_a_sigkill_and_a_malformed_payload,
        ),
        trial(
            "mqtt::a_flood_of_devices_never_stalls_the_door",
            mqtt::a_flood_of_devices_never_stalls_the_door,
        ),
        trial(
            "mqtt::mqtt_over_tls_with_a_password",
            mqtt::mqtt_over_tls_with_a_password,
        ),
        trial(
            "shippers::a_100k_line_ndjson_file_from_curl_is_acked_and_delivered",
            shippers::a_100k_line_ndjson_file_from_curl_is_acked_and_delivered,
        ),
        trial(
            "shippers::a_python_client_gets_every_status_it_should",
            shippers::a_python_client_gets_every_status_it_should,
        ),
        trial(
            "browser::the_demo_page_loses_no_acked_event_across_sigkills",
            browser::the_demo_page_loses_no_acked_event_across_sigkills,
        ),
        trial(
            "disk_full::a_full_disk_resumes_by_itself_when_the_sink_returns",
            disk_full::a_full_disk_resumes_by_itself_when_the_sink_returns,
        ),
        trial(
            "disk_full::a_disk_filled_by_another_process_leaves_the_journal_its_file",
            disk_full::a_disk_filled_by_another_process_leaves_the_journal_its_file,
        ),
        trial(
            "power_loss::every_ack_survives_power_loss_in_rbml",
            power_loss::every_ack_survives_power_loss_in_rbml,
        ),
        trial(
            "power_loss::every_ack_survives_power_loss_in_sbml",
            power_loss::every_ack_survives_power_loss_in_sbml,
        ),
        trial(
            "power_loss::every_ack_survives_power_loss_in_hml",
            power_loss::every_ack_survives_power_loss_in_hml,
        ),
        trial(
            "power_loss::skipped_fsyncs_lose_acked_messages_at_a_power_cut_in_rbml",
            power_loss::skipped_fsyncs_lose_acked_messages_at_a_power_cut_in_rbml,
        ),
        trial(
            "power_loss::skipped_fsyncs_lose_acked_messages_at_a_power_cut_in_sbml",
            power_loss::skipped_fsyncs_lose_acked_messages_at_a_power_cut_in_sbml,
        ),
        trial(
            "power_loss::skipped_fsyncs_lose_acked_messages_at_a_power_cut_in_hml",
            power_loss::skipped_fsyncs_lose_acked_messages_at_a_power_cut_in_hml,
        ),
        trial(
            "power_loss::a_sigkill_alone_cannot_see_skipped_fsyncs",
            power_loss::a_sigkill_alone_cannot_see_skipped_fsyncs,
        ),
    ];
    libtest_mimic::run(&args, trials).exit();
}
