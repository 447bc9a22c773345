"""Sends COUNT log records through the OpenTelemetry Python SDK's OTLP exporter (gRPC or
HTTP), as an application would: stdlib logging -> LoggingHandler -> BatchLogRecordProcessor ->
OTLPLogExporter. Prints `acked BODY` for every record of a batch the exporter reported
exported (SUCCESS), and `done` at the end.

usage: otlp_logs.py grpc|http ENDPOINT COUNT
"""

import logging
import sys
import time

from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
    LogRecordExporter,
    LogRecordExportResult,
)
from opentelemetry.sdk.resources import Resource


class Reporting(LogRecordExporter):
    """The real exporter, and a line per record it says was exported."""

    def __init__(self, inner):
        self.inner = inner

    def export(self, batch):
        result = self.inner.export(batch)
        if result == LogRecordExportResult.SUCCESS or result.name == "SUCCESS":
            for item in batch:
                print("acked", item.log_record.body, flush=True)
        else:
            print("failed", len(batch), flush=True)
        return result

    def shutdown(self):
        self.inner.shutdown()

    def force_flush(self, timeout_millis=30000):
        return True


def main():
    protocol, endpoint, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter

        exporter = OTLPLogExporter(endpoint=endpoint, insecure=True, timeout=30)
    else:
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter

        exporter = OTLPLogExporter(endpoint=endpoint + "/v1/logs", timeout=30)
    provider = LoggerProvider(resource=Resource.create({"service.name": "checkout"}))
    provider.add_log_record_processor(
        BatchLogRecordProcessor(
            Reporting(exporter), schedule_delay_millis=20, max_export_batch_size=50
        )
    )
    log = logging.getLogger("app")
    log.setLevel(logging.INFO)
    log.propagate = False
    log.addHandler(LoggingHandler(level=logging.INFO, logger_provider=provider))
    for i in range(count):
        log.info("record-%d", i)
        time.sleep(0.002)
    provider.force_flush(60000)
    provider.shutdown()
    print("done", flush=True)


if __name__ == "__main__":
    main()
