// Sends N records with the npm fluent-logger package (a real Fluent client)
// to relayd's forward socket, in the event mode given, with
// requireAckResponse: every emit's callback must report success (its chunk
// acknowledged) before the process exits 0.
//   node fluent_send.js SOCKET MODE N TAG
const FluentLogger = require('fluent-logger');
const [sock, mode, nStr, tag] = process.argv.slice(2);
const n = parseInt(nStr, 10);
const sender = FluentLogger.createFluentSender(null, {
  path: sock, eventMode: mode, requireAckResponse: true, ackResponseTimeout: 20000,
  timeout: 20, flushInterval: 20,
});
let done = 0, failed = 0;
sender.on('error', (e) => { console.error('sender error: ' + e); });
for (let i = 0; i < n; i++) {
  const t = new FluentLogger.EventTime(1704164645 + i, 1000 * i);
  sender.emit(tag, { mode: mode, i: i }, t, (err) => {
    if (err) { failed++; console.error('emit ' + i + ': ' + err); }
    if (++done === n) { sender.end(); process.exit(failed ? 1 : 0); }
  });
}
setTimeout(() => { console.error('timed out: ' + done + '/' + n + ' answered'); process.exit(2); }, 60000);
