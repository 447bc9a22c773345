// Sends COUNT records through Fluentd's Node.js client (npm fluent-logger) with
// requireAckResponse, as an application would, re-emitting a record whose send failed (the
// library reports the failure; it does not resend by itself). Prints `acked TEXT` for every
// record whose chunk the server acknowledged, and `done` when all are.
//
// usage: node forward_node.js HOST PORT COUNT MODE   (MODE: PackedForward, Message, ...)
const path = require('path');
const logger = require(path.join(process.env.FLUENT_NODE_MODULES, 'fluent-logger'));

const [host, port, count, mode] = process.argv.slice(2);
const total = Number(count);
const sender = logger.createFluentSender('app', {
  host,
  port: Number(port),
  timeout: 3.0,
  requireAckResponse: true,
  ackResponseTimeout: 2000,
  reconnectInterval: 300,
  eventMode: mode,
  flushInterval: 20,
  internalLogger: { info() {}, error() {} },
});
sender.on('error', () => {});

const acked = new Set();
function send(i) {
  sender.emit('web', { log: `rec-${i}`, level: 'info' }, (err) => {
    if (err) {
      setTimeout(() => send(i), 300);
      return;
    }
    if (!acked.has(i)) {
      acked.add(i);
      console.log(`acked rec-${i}`);
    }
    if (acked.size === total) {
      console.log('done');
      sender.end();
      process.exit(0);
    }
  });
}
let next = 0;
const pace = setInterval(() => {
  for (let k = 0; k < 5 && next < total; k++) send(next++);
  if (next >= total) clearInterval(pace);
}, 5);
setTimeout(() => {
  console.error(`gave up with ${acked.size} of ${total} acked`);
  process.exit(1);
}, 90000);
