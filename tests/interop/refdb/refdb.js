// node-soap as a DC application would use it: read /refdb?wsdl, Upsert, then Query.
// Usage: node refdb.js GATEWAY_URL; prints one JSON object with what came back.
'use strict';
const soap = require('soap');

async function main() {
  const base = process.argv[2];
  const client = await soap.createClientAsync(`${base}/refdb?wsdl`);
  const field = (name, value) => ({ attributes: value === null ? { name } : { name, value } });
  const record = (id, name, fee) => ({ field: [field('person_id', id), field('name', name), field('fee', fee)] });
  const [pushed] = await client.UpsertAsync({
    dataset: 'residents', mode: 'full',
    records: {
      record: [record('N001', 'ノード 一郎', '12.5'), record('N002', 'node two', null)],
      row: [{ attributes: { person_id: 'N003', name: 'row & three', household: '3' } }],  // the compact form
    },
  });
  const [found] = await client.QueryAsync({
    dataset: 'residents', filters: { filter: [{ attributes: { name: 'person_id', op: 'ge', value: 'N001' } }] },
    limit: 10,
  });
  let fault = null;
  try {
    await client.QueryAsync({ dataset: 'nope' });
  } catch (err) {
    fault = err.root && err.root.Envelope.Body.Fault;
  }
  const records = [].concat(found.records.record || []).map(r =>
    Object.fromEntries([].concat(r.field).map(f => [f.attributes.name, f.attributes.value === undefined ? null : f.attributes.value])));
  console.log(JSON.stringify({ pushed, version: found.version, more: found.more, records, fault }));
}

main().catch(err => { console.error(err.stack || String(err)); process.exit(1); });
