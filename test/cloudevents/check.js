// The store as a CloudEvents consumer and producer sees it, with the
// CloudEvents JavaScript SDK and kafkajs (test/t/013_cloudevents.pl).
//
//   node check.js produce BOOTSTRAP TOPIC
//       a binary and a structured event for the ingest, made by the SDK;
//       prints "produced <mode> <id> <subject> <time>" for each
//   node check.js validate BOOTSTRAP TOPIC COUNT
//       reads COUNT messages of the mirror's topic, makes each an event with
//       the SDK and validates it; prints "valid <id> <source> <time>" or
//       "invalid <offset>: <why>" for each
'use strict';
const { Kafka: KafkaJS, logLevel, Partitioners } = require('kafkajs');
const { CloudEvent, Kafka } = require('cloudevents');

const [mode, bootstrap, topic, count] = process.argv.slice(2);
const kafka = new KafkaJS({ clientId: 'cloudevents-check', brokers: bootstrap.split(','), logLevel: logLevel.WARN });

// The SDK's Kafka message (attributes left undefined, numbers as numbers,
// the data as an object) as kafkajs sends it: strings and Buffers.
function toKafkaJs(m) {
  const headers = {};
  for (const [k, v] of Object.entries(m.headers))
    if (v !== undefined && v !== null) headers[k] = String(v);
  const value = typeof m.value === 'string' ? m.value : JSON.stringify(m.value);
  return { key: m.key, value, headers };
}

// A kafkajs message as the SDK's Kafka.toEvent reads it: header values as
// strings (kafkajs gives Buffers).
function fromKafkaJs(m) {
  const headers = {};
  for (const [k, v] of Object.entries(m.headers || {}))
    headers[k] = (Array.isArray(v) ? v[v.length - 1] : v).toString('utf8');
  const value = m.value === null ? null : m.value.toString('utf8');
  return { headers, key: m.key === null ? undefined : m.key.toString('utf8'), value, body: value, timestamp: m.timestamp };
}

async function produce() {
  const common = {
    source: '/node-sdk/teller',
    type: 'ACCOUNT_OPENED',
    datacontenttype: 'application/json',
    aggregatetype: 'Account',
    aggregateversion: 1,
  };
  const events = {
    binary: new CloudEvent({ ...common, subject: 'NODE-B', partitionkey: 'NODE-B', time: '2026-12-06T09:00:00.123Z',
                             data: { owner: 'Ann', balance: 10 } }),
    structured: new CloudEvent({ ...common, subject: 'NODE-S', partitionkey: 'NODE-S', time: '2026-12-06T09:30:00Z',
                                 data: { owner: 'Bob', balance: 20 } }),
  };
  const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner });
  await producer.connect();
  await producer.send({
    topic, acks: -1,
    messages: [toKafkaJs(Kafka.binary(events.binary)), toKafkaJs(Kafka.structured(events.structured))],
  });
  await producer.disconnect();
  for (const [m, e] of Object.entries(events))
    console.log(`produced ${m} ${e.id} ${e.subject} ${e.time}`);
}

async function validate() {
  const want = Number(count);
  let seen = 0;
  // The first JoinGroup of the mock cluster takes about 3 s; a short fetch
  // wait keeps disconnect() from waiting out a long one.
  const consumer = kafka.consumer({ groupId: `cloudevents-check-${process.pid}`, maxWaitTimeInMs: 200 });
  await consumer.connect();
  await consumer.subscribe({ topics: [topic], fromBeginning: true });
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timeout: ${seen} of ${want} messages`)), 60000);
    consumer.run({
      eachMessage: async ({ message }) => {
        const time = message.headers.ce_time ? message.headers.ce_time.toString() : '-';
        try {
          // RangeError (a time the SDK cannot read), SyntaxError, ValidationError: all mean lost to SDK consumers.
          const event = Kafka.toEvent(fromKafkaJs(message));
          event.validate();
          console.log(`valid ${event.id} ${event.source} ${time}`);
        } catch (e) {
          console.log(`invalid ${message.offset}: ${e.name}: ${e.message} (ce_time ${time})`);
        }
        if (++seen === want) { clearTimeout(timer); resolve(); }
      },
    }).catch(reject);
  });
  await consumer.disconnect();
}

(mode === 'produce' ? produce() : validate()).catch((e) => { console.error(e); process.exit(1); });
