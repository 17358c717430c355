// A Node.js agent driving a p2p-node over gRPC, the way the original TypeScript agents drive
// theirs: @grpc/grpc-js with the .proto loaded at run time by @grpc/proto-loader.
//
//   node grpc_agent.mjs PROTO TARGET BOOTSTRAP_ADDR PEER_ETH TOPIC
//
// It reads the node's info, opens its event stream, connects to the network, subscribes to
// TOPIC, sends a direct message to PEER_ETH and waits for an answer from that peer, then shuts
// the node down. Every step is printed as one JSON line on stdout; errors exit with status 1.
import grpc from '@grpc/grpc-js'
import protoLoader from '@grpc/proto-loader'

const [proto, target, bootstrap, peerEth, topic] = process.argv.slice(2)
const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')

const definition = protoLoader.loadSync(proto, {
  keepCase: true,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true
})
const { p2pnet } = grpc.loadPackageDefinition(definition)
const client = new p2pnet.v1.AgentNode(target, grpc.credentials.createInsecure())

const call = (method, request) =>
  new Promise((resolve, reject) => {
    client[method](request, { deadline: Date.now() + 30_000 }, (err, answer) =>
      err ? reject(err) : resolve(answer)
    )
  })

const events = []
const waiters = []
function onEvent (event) {
  events.push(event)
  for (const w of waiters.splice(0)) {
    if (!w(event)) waiters.push(w)
  }
}
const waitFor = (predicate, ms) =>
  new Promise((resolve, reject) => {
    const found = events.find(predicate)
    if (found) return resolve(found)
    const timer = setTimeout(() => reject(new Error('timed out waiting for an event')), ms)
    waiters.push((event) => {
      if (!predicate(event)) return false
      clearTimeout(timer)
      resolve(event)
      return true
    })
  })

async function main () {
  const before = await call('GetInfo', {})
  out({ step: 'info', connected: before.connected, grpcPort: before.grpc_port })

  const stream = client.Events({})
  stream.on('data', onEvent)
  stream.on('error', (err) => {
    if (err.code !== grpc.status.CANCELLED && err.code !== grpc.status.UNAVAILABLE) {
      out({ step: 'stream-error', code: err.code, details: err.details })
    }
  })
  // The stream is registered once its metadata arrived: nothing after that is missed.
  await new Promise((resolve) => stream.once('metadata', resolve))

  try {
    await call('Send', { to: peerEth, data_json: '1' })
    out({ step: 'send-before-connect', ok: true })
  } catch (err) {
    out({ step: 'send-before-connect', code: grpc.status[err.code], details: err.details })
  }

  const info = await call('Connect', { bootstrap_peers: { addrs: [bootstrap] } })
  out({ step: 'ready', peerId: info.peer_id, ethAddress: info.eth_address })
  await call('Subscribe', { topic })
  const sent = await call('Send', {
    to: peerEth,
    data_json: JSON.stringify({ from: 'js', text: 'hello from Node.js' })
  })
  out({ step: 'sent', to: sent.peer_id })

  const answer = await waitFor(
    (e) => e.kind === 'message' && e.message.from_eth.toLowerCase() === peerEth.toLowerCase(),
    20_000
  )
  out({
    step: 'message',
    data: JSON.parse(answer.message.data_json),
    direct: answer.message.direct,
    seq: answer.seq
  })
  out({ step: 'events', kinds: events.map((e) => e.kind), seqs: events.map((e) => e.seq) })

  await call('Shutdown', {})
  out({ step: 'shutdown' })
  stream.cancel()
  client.close()
}

main().catch((err) => {
  out({ step: 'failed', message: String(err && err.stack ? err.stack : err) })
  process.exit(1)
})
