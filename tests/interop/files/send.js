// node-soap (npm "soap") client: sends one file as a single MTOM PutFilePart
// (schemas/file.wsdl) through the bmrgw gateway. Prints one JSON line: what it
// put on the wire (SHA-256, size, Content-Type of the HTTP body) and the answer.
// Usage: node send.js WSDL ENDPOINT FILE DESTINATION
'use strict';
const crypto = require('crypto');
const fs = require('fs');
const axios = require('axios');
const soap = require('soap');

const [wsdl, endpoint, file, destination] = process.argv.slice(2);
const sha256 = (bytes) => crypto.createHash('sha256').update(bytes).digest('hex');

async function main() {
  const data = fs.readFileSync(file);
  const digest = sha256(data);
  const request = axios.create();
  let sent = null;
  request.interceptors.request.use((config) => {
    const body = Buffer.isBuffer(config.data) ? config.data : Buffer.from(config.data);
    const headers = config.headers;
    const contentType = typeof headers.get === 'function' ? headers.get('Content-Type') : headers['Content-Type'];
    sent = { sha256: sha256(body), size: body.length, contentType };
    return config;
  });
  const client = await soap.createClientAsync(wsdl, { endpoint, request });
  client.addSoapHeader('<r:Routing xmlns:r="urn:bmrgw:routing:1"><r:To>' + destination +
                       '</r:To><r:From>node-soap</r:From></r:Routing>');
  const args = {
    fileId: 'node-' + digest.slice(0, 16), fileName: 'node-soap.bin', partNo: 1, partCount: 1,
    partSha256: digest, fileSha256: digest, fileSize: data.length, compression: 'none',
    streamSize: data.length, partSize: Math.max(1, data.length),
    part: { $xml: '<xop:Include xmlns:xop="http://www.w3.org/2004/08/xop/include" href="cid:node-part"/>' },
  };
  const attachments = [{ mimetype: 'application/octet-stream', contentId: 'node-part', name: 'node-soap.bin', body: data }];
  try {
    const [result] = await client.PutFilePartAsync(args, { attachments, forceMTOM: true });
    console.log(JSON.stringify({ ok: true, sent, result }));
  } catch (err) {
    console.log(JSON.stringify({ ok: false, sent, error: String(err) }));
    process.exitCode = 1;
  }
}

main().catch((err) => { console.error(String(err)); process.exitCode = 2; });
