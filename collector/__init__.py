"""celltap collector: IPFIX / NetFlow v9 / v5 ingestion.

Ingestion (this package's non-cluster modules):
  ingest.Ingestor         sans-IO core: feed([(exporter, message)], now) -> [celltap.ipfix.RecordBatch]
  slot_batch.feed_slots   numpy path for recvmmsg batches of plain IPFIX data messages
  udp_server / recvmmsg   SO_REUSEPORT sockets, large buffers, recvmmsg, kernel drop counts
  tcp_server              IPFIX over TCP
  template_store          TemplateStore (in memory, or any put/get_prefix key-value store: the registry)
  service.CollectorService(config, hook)  runs it all; hook(worker_index) -> callable(list[RecordBatch])
  cli                     `celltap collector` (--config, --listen ... --json, --read-pcap ... --json)
"""
