// A js-libp2p peer driven over JSON lines, used by p2pnet's interop tests.
//
// stdin:  one JSON command per line: {"id": <any>, "cmd": "<name>", ...args}
// stdout: one JSON line per command: {"id": ..., "ok": true, ...result}
//                                  | {"id": ..., "ok": false, "error": "...", "code": "..."}
//         plus unsolicited events:   {"event": "<type>", ...}
// stderr: everything else (js-libp2p logs via DEBUG=libp2p:*, diagnostics).
//
// Startup options: JSON object in argv[2] (all optional):
//   {"keyType": "ed25519"|"secp256k1", "seed": "<hex>", "listen": "<ma>" | ["<ma>", ...],
//    "connectionMonitor": true, "pingInterval": 10000, "connectionManager": {...},
//    "tcp": {...@libp2p/tcp options}, "appendAnnounce": ["<ma>", ...],
//    "modules": ["<name>", ...]}
// Each module ./mod_<name>.mjs adds services, transports and commands (see README.md, "Modules").
// See README.md for the command list.

// --- Node 20 lacks Promise.withResolvers; js-libp2p 3.x calls it. Must run before any import
// of libp2p code executes, hence the dynamic imports below.
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function withResolvers () {
    let resolve
    let reject
    const promise = new this((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}

// Keep stdout strictly JSON: anything that logs through console goes to stderr.
console.log = console.error
console.info = console.error
console.debug = console.error
console.warn = console.error

const { createLibp2p } = await import('libp2p')
const { tcp } = await import('@libp2p/tcp')
const { noise } = await import('@libp2p/noise')
const { yamux } = await import('@libp2p/yamux')
const { identify, identifyPush } = await import('@libp2p/identify')
const { ping } = await import('@libp2p/ping')
const { generateKeyPair, generateKeyPairFromSeed, privateKeyFromRaw } = await import('@libp2p/crypto/keys')
const { peerIdFromString } = await import('@libp2p/peer-id')
const { multiaddr } = await import('@multiformats/multiaddr')
const { randomFillSync } = await import('node:crypto')
const readline = await import('node:readline')

export const ECHO_PROTOCOL = '/p2pnet/echo/1.0.0'
export const SINK_PROTOCOL = '/p2pnet/sink/1.0.0'
const MAX_STREAMS = 1024
// js yamux lets a stream's receive window grow to 16 MiB; a paused stream may therefore receive
// up to that much before the remote runs out of credit. Keep the read buffer limit above it.
const MAX_READ_BUFFER = 64 * 1024 * 1024
const READ_HIGH_WATER = 4 * 1024 * 1024

// ------------------------------------------------------------------------------------------
// output

function emit (obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

function event (type, fields = {}) {
  emit({ event: type, ...fields })
}

function log (...args) {
  console.error('[peer.mjs]', ...args)
}

function errorText (err) {
  if (err == null) return 'unknown error'
  const name = err.name ?? 'Error'
  let text = `${name}: ${err.message ?? String(err)}`
  if (err.errors != null && Array.isArray(err.errors) && err.errors.length > 0) {
    text += ' [' + err.errors.map(e => `${e?.name}: ${e?.message}`).join('; ') + ']'
  }
  return text
}

class CommandError extends Error {
  constructor (message, name = 'CommandError') {
    super(message)
    this.name = name
  }
}

// ------------------------------------------------------------------------------------------
// options and identity

function parseOptions () {
  const raw = process.argv[2]
  if (raw == null || raw === '') return {}
  try {
    const opts = JSON.parse(raw)
    if (opts == null || typeof opts !== 'object') throw new Error('not an object')
    return opts
  } catch (err) {
    throw new CommandError(`argv[2] must be a JSON object of options: ${err.message}`)
  }
}

function hexToBytes (hex) {
  const clean = hex.startsWith('0x') ? hex.slice(2) : hex
  if (clean.length % 2 !== 0 || /[^0-9a-fA-F]/.test(clean)) {
    throw new CommandError(`bad hex string: ${hex}`)
  }
  return Uint8Array.from(Buffer.from(clean, 'hex'))
}

async function makePrivateKey (keyType, seedHex) {
  const type = (keyType ?? 'ed25519').toLowerCase()
  if (type === 'ed25519') {
    if (seedHex == null) return generateKeyPair('Ed25519')
    const seed = hexToBytes(seedHex)
    if (seed.length === 32) return generateKeyPairFromSeed('Ed25519', seed)
    if (seed.length === 64) return privateKeyFromRaw(seed) // priv || pub
    throw new CommandError(`ed25519 seed must be 32 bytes (or 64 bytes priv||pub), got ${seed.length}`)
  }
  if (type === 'secp256k1') {
    if (seedHex == null) return generateKeyPair('secp256k1')
    const scalar = hexToBytes(seedHex)
    if (scalar.length !== 32) throw new CommandError(`secp256k1 key must be 32 bytes, got ${scalar.length}`)
    return privateKeyFromRaw(scalar)
  }
  throw new CommandError(`unsupported keyType ${keyType} (ed25519 | secp256k1)`)
}

// ------------------------------------------------------------------------------------------
// stream helpers (js-libp2p 3.x message-stream API)

// Reads a Stream chunk by chunk with backpressure: pauses the stream when more than
// READ_HIGH_WATER bytes are queued unread, resumes when the consumer catches up. Ends on the
// 'end' event (remote closed its write side and everything was delivered); rejects if the
// stream closes with an error (reset / abort).
class StreamReader {
  constructor (stream) {
    this.stream = stream
    this.queue = []
    this.queued = 0
    this.done = false
    this.error = null
    this.waiter = null
    stream.maxReadBufferLength = Math.max(stream.maxReadBufferLength ?? 0, MAX_READ_BUFFER)
    this.onMessage = (evt) => {
      const data = evt.data
      // evt.data is a Uint8Array or a Uint8ArrayList
      const chunk = data instanceof Uint8Array ? data : data.subarray()
      if (chunk.byteLength === 0) return
      this.queue.push(chunk)
      this.queued += chunk.byteLength
      if (this.queued > READ_HIGH_WATER && stream.readStatus === 'readable') {
        try { stream.pause(); stats.pauses++ } catch {}
      }
      this.wake()
    }
    this.onEnd = () => { this.finish(null) }
    this.onClose = (evt) => {
      if (evt?.error != null) {
        this.finish(evt.error)
      } else if (stream.readBufferLength === 0) {
        this.finish(null)
      }
    }
    stream.addEventListener('message', this.onMessage)
    stream.addEventListener('end', this.onEnd)
    stream.addEventListener('close', this.onClose)
    // 'end' may have fired before we attached; buffered data (if any) is dispatched in a
    // microtask by addEventListener('message'), so check after that.
    setTimeout(() => {
      if (stream.readableEnded && stream.readBufferLength === 0) this.finish(null)
      else if (stream.status !== 'open' && stream.status !== 'closing' && stream.readBufferLength === 0) this.finish(null)
    }, 0)
  }

  finish (err) {
    if (this.done) return
    this.done = true
    this.error = err
    this.detach()
    this.wake()
  }

  detach () {
    this.stream.removeEventListener('message', this.onMessage)
    this.stream.removeEventListener('end', this.onEnd)
    this.stream.removeEventListener('close', this.onClose)
  }

  wake () {
    const w = this.waiter
    this.waiter = null
    w?.()
  }

  // Returns the next Uint8Array, or null at EOF. Throws the stream error on reset/abort.
  async next () {
    for (;;) {
      if (this.queue.length > 0) {
        const chunk = this.queue.shift()
        this.queued -= chunk.byteLength
        if (this.queued <= READ_HIGH_WATER / 2 && this.stream.readStatus === 'paused') {
          try { this.stream.resume() } catch {}
        }
        return chunk
      }
      if (this.done) {
        if (this.error != null) throw this.error
        return null
      }
      await new Promise(resolve => { this.waiter = resolve })
    }
  }
}

// send() with backpressure: when send() returns false, wait for 'drain' (or fail on close).
async function sendAll (stream, data) {
  if (!stream.send(data)) {
    stats.drainWaits++
    await stream.onDrain()
  }
}

// counters reported by the "stats" command (useful to see that backpressure engaged)
const stats = { pauses: 0, drainWaits: 0 }

function randomBytes (n) {
  const buf = new Uint8Array(n)
  randomFillSync(buf)
  return buf
}

// ------------------------------------------------------------------------------------------
// protocol handlers

async function handleEcho (stream, connection) {
  event('stream', { protocol: ECHO_PROTOCOL, peerId: connection.remotePeer.toString(), direction: 'inbound' })
  const reader = new StreamReader(stream)
  let total = 0
  try {
    for (;;) {
      const chunk = await reader.next()
      if (chunk == null) break
      total += chunk.byteLength
      await sendAll(stream, chunk)
    }
    await stream.close()
    event('echo_done', { peerId: connection.remotePeer.toString(), bytes: total })
  } catch (err) {
    log('echo handler error', errorText(err))
    event('echo_error', { peerId: connection.remotePeer.toString(), bytes: total, error: errorText(err) })
    stream.abort(err)
  }
}

async function handleSink (stream, connection) {
  event('stream', { protocol: SINK_PROTOCOL, peerId: connection.remotePeer.toString(), direction: 'inbound' })
  const reader = new StreamReader(stream)
  const start = performance.now()
  let total = 0
  try {
    for (;;) {
      const chunk = await reader.next()
      if (chunk == null) break
      total += chunk.byteLength
    }
    const ms = performance.now() - start
    const out = new Uint8Array(8)
    new DataView(out.buffer).setBigUint64(0, BigInt(total), false)
    await sendAll(stream, out)
    await stream.close()
    event('sink_done', { peerId: connection.remotePeer.toString(), bytes: total, ms, MBps: mbps(total, ms) })
  } catch (err) {
    log('sink handler error', errorText(err))
    event('sink_error', { peerId: connection.remotePeer.toString(), bytes: total, error: errorText(err) })
    stream.abort(err)
  }
}

function mbps (bytes, ms) {
  return ms > 0 ? (bytes / 1e6) / (ms / 1000) : null
}

// ------------------------------------------------------------------------------------------
// node

const options = parseOptions()
const privateKey = await makePrivateKey(options.keyType, options.seed)
const listen = options.listen == null
  ? ['/ip4/127.0.0.1/tcp/0']
  : (Array.isArray(options.listen) ? options.listen : [options.listen])

// Optional modules (./mod_<name>.mjs): each may export `services(options)` -> extra libp2p
// services, and `commands(ctx)` -> extra commands. Loaded before the node is created.
const modules = []
for (const name of options.modules ?? []) {
  if (!/^[a-z0-9_]+$/.test(name)) throw new CommandError(`bad module name ${JSON.stringify(name)}`)
  modules.push(await import(`./mod_${name}.mjs`))
}
const extraServices = {}
for (const mod of modules) {
  if (typeof mod.services === 'function') Object.assign(extraServices, await mod.services(options))
}
// a module may also add transports (mod_relay: the circuit relay transport)
const extraTransports = []
for (const mod of modules) {
  if (typeof mod.transports === 'function') extraTransports.push(...(await mod.transports(options)))
}

const node = await createLibp2p({
  privateKey,
  addresses: {
    listen,
    // addresses to announce besides the listening ones (a known NAT mapping: DCUtR lab test)
    ...(options.appendAnnounce != null ? { appendAnnounce: options.appendAnnounce } : {})
  },
  // "tcp": @libp2p/tcp options, e.g. {"dialOpts": {"localPort": 40002}} (net.connect options)
  transports: [tcp(options.tcp ?? {}), ...extraTransports],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: {
    identify: identify(),
    identifyPush: identifyPush(),
    ping: ping(),
    ...extraServices
  },
  connectionMonitor: {
    enabled: options.connectionMonitor !== false,
    ...(options.pingInterval != null ? { pingInterval: options.pingInterval } : {})
  },
  // passed through, e.g. {"inboundConnectionThreshold": 1000} for dial_bench: js refuses more
  // than 5 inbound connections per second from one IP by default
  ...(options.connectionManager != null ? { connectionManager: options.connectionManager } : {}),
  start: false
})

await node.handle(ECHO_PROTOCOL, handleEcho, {
  maxInboundStreams: MAX_STREAMS,
  maxOutboundStreams: MAX_STREAMS,
  runOnLimitedConnection: true
})
await node.handle(SINK_PROTOCOL, handleSink, {
  maxInboundStreams: MAX_STREAMS,
  maxOutboundStreams: MAX_STREAMS,
  runOnLimitedConnection: true
})

// identify bookkeeping: peerId -> latest IdentifyResult summary, plus waiters
const identified = new Map()
const identifyWaiters = new Map()

function identifySummary (result) {
  return {
    peerId: result.peerId.toString(),
    protocols: [...result.protocols].sort(),
    listenAddrs: result.listenAddrs.map(a => a.toString()),
    agentVersion: result.agentVersion ?? null,
    protocolVersion: result.protocolVersion ?? null,
    observedAddr: result.observedAddr?.toString() ?? null
  }
}

node.addEventListener('peer:identify', (evt) => {
  const summary = identifySummary(evt.detail)
  identified.set(summary.peerId, summary)
  const waiters = identifyWaiters.get(summary.peerId)
  identifyWaiters.delete(summary.peerId)
  waiters?.forEach(w => w())
  event('identify', summary)
})

function connSummary (conn) {
  return {
    peerId: conn.remotePeer.toString(),
    remoteAddr: conn.remoteAddr.toString(),
    encryption: conn.encryption ?? null,
    multiplexer: conn.multiplexer ?? null,
    direction: conn.direction,
    status: conn.status,
    streams: conn.streams.length
  }
}

node.addEventListener('connection:open', (evt) => {
  event('connection_open', connSummary(evt.detail))
})
node.addEventListener('connection:close', (evt) => {
  const c = evt.detail
  event('connection_close', { peerId: c.remotePeer.toString(), remoteAddr: c.remoteAddr.toString(), direction: c.direction })
})

await node.start()

// ------------------------------------------------------------------------------------------
// commands

// A target is an "addr" (multiaddr string, normally with /p2p/<id>) or a "peerId".
function target (args) {
  if (typeof args.addr === 'string' && args.addr !== '') return multiaddr(args.addr)
  if (typeof args.peerId === 'string' && args.peerId !== '') return peerIdFromString(args.peerId)
  throw new CommandError('need "addr" or "peerId"')
}

function requirePeerId (args) {
  if (typeof args.peerId !== 'string' || args.peerId === '') throw new CommandError('need "peerId"')
  return peerIdFromString(args.peerId)
}

function timeoutSignal (args, defaultMs = 30_000) {
  const ms = typeof args.timeoutMs === 'number' ? args.timeoutMs : defaultMs
  return AbortSignal.timeout(ms)
}

function waitIdentify (peerIdStr, ms) {
  if (identified.has(peerIdStr)) return Promise.resolve(true)
  return new Promise((resolve) => {
    let timer = null
    const done = () => { clearTimeout(timer); resolve(true) }
    const list = identifyWaiters.get(peerIdStr) ?? []
    list.push(done)
    identifyWaiters.set(peerIdStr, list)
    timer = setTimeout(() => {
      const l = identifyWaiters.get(peerIdStr)
      if (l != null) {
        const i = l.indexOf(done)
        if (i >= 0) l.splice(i, 1)
        if (l.length === 0) identifyWaiters.delete(peerIdStr)
      }
      resolve(false)
    }, ms)
  })
}

const decoder = new TextDecoder()

async function peerInfo (args) {
  const peerId = requirePeerId(args)
  const key = peerId.toString()
  let identifyDone = identified.has(key)
  if ((args.wait_identify === true || args.waitIdentify === true) && !identifyDone) {
    const ms = typeof args.timeoutMs === 'number' ? args.timeoutMs : 10_000
    identifyDone = await waitIdentify(key, ms)
    if (!identifyDone) throw new CommandError(`identify with ${key} did not complete within ${ms} ms`, 'TimeoutError')
  }
  let peer
  try {
    peer = await node.peerStore.get(peerId)
  } catch (err) {
    if (err.name === 'NotFoundError') throw new CommandError(`peer ${key} not in peer store`, 'NotFoundError')
    throw err
  }
  const meta = (k) => {
    const v = peer.metadata.get(k)
    return v == null ? null : decoder.decode(v)
  }
  return {
    peerId: key,
    protocols: [...peer.protocols].sort(),
    addrs: peer.addresses.map(a => a.multiaddr.toString()),
    // addresses from the peer's signed peer record (identify field 8), which js verified
    certifiedAddrs: peer.addresses.filter(a => a.isCertified).map(a => a.multiaddr.toString()),
    hasPeerRecord: peer.peerRecordEnvelope != null,
    agentVersion: meta('AgentVersion'),
    protocolVersion: meta('ProtocolVersion'),
    identified: identifyDone,
    identify: identified.get(key) ?? null
  }
}

async function echo (args) {
  const size = args.size ?? 1024
  const nStreams = args.streams ?? 1
  const chunk = args.chunk ?? 65536
  if (!Number.isInteger(size) || size < 0) throw new CommandError('size must be an integer >= 0')
  if (!Number.isInteger(nStreams) || nStreams < 1) throw new CommandError('streams must be an integer >= 1')
  if (!Number.isInteger(chunk) || chunk < 1) throw new CommandError('chunk must be an integer >= 1')
  const readDelayMs = args.readDelayMs ?? 0 // > 0: a slow reader, sleeps after every chunk
  const protocol = args.protocol ?? ECHO_PROTOCOL
  const signal = timeoutSignal(args, 60_000)
  const conn = await node.dial(target(args), { signal })
  const start = performance.now()
  const one = async (i) => {
    const payload = randomBytes(size)
    let stream
    let phase = 'open'
    try {
      stream = await conn.newStream(protocol, { signal, maxOutboundStreams: MAX_STREAMS })
      const reader = new StreamReader(stream)
      phase = 'echo'
      const readAll = (async () => {
        let off = 0
        for (;;) {
          const buf = await reader.next()
          if (buf == null) break
          if (off + buf.byteLength > size) {
            throw new CommandError(`received ${off + buf.byteLength} bytes, more than the ${size} sent`)
          }
          if (Buffer.compare(buf, payload.subarray(off, off + buf.byteLength)) !== 0) {
            throw new CommandError(`data mismatch in bytes ${off}..${off + buf.byteLength}`)
          }
          off += buf.byteLength
          if (readDelayMs > 0) await new Promise(resolve => setTimeout(resolve, readDelayMs))
        }
        if (off !== size) throw new CommandError(`stream ended after ${off} of ${size} bytes`)
        return off
      })()
      readAll.catch(() => {}) // handled below; avoid an unhandled rejection while writing
      const writeAll = (async () => {
        for (let off = 0; off < size; off += chunk) {
          await sendAll(stream, payload.subarray(off, Math.min(size, off + chunk)))
        }
        await stream.close({ signal })
      })()
      writeAll.catch(() => {})
      const onAbort = () => stream.abort(new CommandError('echo timed out', 'TimeoutError'))
      signal.addEventListener('abort', onAbort, { once: true })
      try {
        const [got] = await Promise.all([readAll, writeAll])
        return got
      } finally {
        signal.removeEventListener('abort', onAbort)
      }
    } catch (err) {
      stream?.abort(err)
      const e = new CommandError(`stream ${i} (${phase}): ${errorText(err)}`, err.name ?? 'Error')
      throw e
    }
  }
  const results = await Promise.allSettled(Array.from({ length: nStreams }, (_, i) => one(i)))
  const ms = performance.now() - start
  const failed = results.map((r, i) => [r, i]).filter(([r]) => r.status === 'rejected')
  if (failed.length > 0) {
    const first = failed[0][0].reason
    throw new CommandError(`${failed.length}/${nStreams} echo streams failed; first: ${first.message}`, first.name)
  }
  const bytesEchoed = results.reduce((a, r) => a + r.value, 0)
  return { bytesEchoed, streams: nStreams, ms, MBps: mbps(bytesEchoed, ms), peerId: conn.remotePeer.toString() }
}

async function throughputSend (args) {
  const total = args.bytes ?? 64 * 1024 * 1024
  const chunkSize = args.chunk ?? 256 * 1024
  if (!Number.isInteger(total) || total < 0) throw new CommandError('bytes must be an integer >= 0')
  if (!Number.isInteger(chunkSize) || chunkSize < 1) throw new CommandError('chunk must be an integer >= 1')
  const signal = timeoutSignal(args, 120_000)
  const conn = await node.dial(target(args), { signal })
  const stream = await conn.newStream(args.protocol ?? SINK_PROTOCOL, { signal, maxOutboundStreams: MAX_STREAMS })
  const onAbort = () => stream.abort(new CommandError('throughput_send timed out', 'TimeoutError'))
  signal.addEventListener('abort', onAbort, { once: true })
  try {
    const reader = new StreamReader(stream)
    const buf = randomBytes(chunkSize) // reused; never modified, so queued references stay valid
    const start = performance.now()
    let sent = 0
    while (sent < total) {
      const n = Math.min(chunkSize, total - sent)
      await sendAll(stream, n === chunkSize ? buf : buf.subarray(0, n))
      sent += n
    }
    await stream.close({ signal })
    const parts = []
    let got = 0
    for (;;) {
      const b = await reader.next()
      if (b == null) break
      parts.push(b)
      got += b.byteLength
    }
    const ms = performance.now() - start
    if (got !== 8) throw new CommandError(`sink replied with ${got} bytes, expected an 8-byte count`)
    const reply = Buffer.concat(parts)
    const count = Number(reply.readBigUInt64BE(0))
    if (count !== total) throw new CommandError(`sink counted ${count} bytes, sent ${total}`)
    return { bytes: total, ms, MBps: mbps(total, ms), peerId: conn.remotePeer.toString() }
  } catch (err) {
    stream.abort(err)
    throw err
  } finally {
    signal.removeEventListener('abort', onAbort)
  }
}

// dial_bench: `count` sequential fresh connections to `addr`, each TCP + Noise + yamux + a first
// stream on the sink protocol (close write, read the 8-byte count), then the connection is closed.
// `force: true` makes js open a new connection even if one to that peer exists.
async function dialBench (args) {
  const count = args.count ?? 100
  if (!Number.isInteger(count) || count < 1) throw new CommandError('count must be an integer >= 1')
  if (typeof args.addr !== 'string' || args.addr === '') throw new CommandError('need "addr"')
  const ma = multiaddr(args.addr)
  const protocol = args.protocol ?? SINK_PROTOCOL
  const signal = timeoutSignal(args, 120_000)
  const phases = { dialMs: 0, streamMs: 0, closeMs: 0 } // summed over all setups
  const start = performance.now()
  for (let i = 0; i < count; i++) {
    let conn
    try {
      const t0 = performance.now()
      conn = await node.dial(ma, { signal, force: true })
      const t1 = performance.now()
      const stream = await conn.newStream(protocol, { signal, maxOutboundStreams: MAX_STREAMS })
      const reader = new StreamReader(stream)
      await stream.close({ signal })
      let got = 0
      for (;;) {
        const b = await reader.next()
        if (b == null) break
        got += b.byteLength
      }
      if (got !== 8) throw new CommandError(`sink replied with ${got} bytes, expected an 8-byte count`)
      const t2 = performance.now()
      await conn.close({ signal })
      phases.dialMs += t1 - t0
      phases.streamMs += t2 - t1
      phases.closeMs += performance.now() - t2
    } catch (err) {
      conn?.abort(err)
      throw new CommandError(`setup ${i + 1}/${count}: ${errorText(err)}`, err.name ?? 'Error')
    }
  }
  const ms = performance.now() - start
  return { count, ms, perSecond: count / (ms / 1000), ...phases }
}

let stopping = null

async function stopNode () {
  if (stopping != null) return stopping
  stopping = (async () => {
    const t = setTimeout(() => {
      log('node.stop() did not finish within 5 s; exiting anyway')
      process.exit(0)
    }, 5000)
    try {
      await node.stop()
    } catch (err) {
      log('error stopping node', errorText(err))
    } finally {
      clearTimeout(t)
    }
  })()
  return stopping
}

const commands = {
  async dial (args) {
    const conn = await node.dial(target(args), { signal: timeoutSignal(args) })
    return connSummary(conn)
  },
  async hangup (args) {
    await node.hangUp(target(args), { signal: timeoutSignal(args) })
    return {}
  },
  async ping (args) {
    const rtt = await node.services.ping.ping(target(args), { signal: timeoutSignal(args) })
    return { rtt }
  },
  async peer_info (args) {
    return peerInfo(args)
  },
  async identify (args) {
    // run identify again on an open connection and return the result
    const peerId = requirePeerId(args)
    const conn = node.getConnections(peerId)[0]
    if (conn == null) throw new CommandError(`no connection to ${peerId}`, 'NotConnectedError')
    const result = await node.services.identify.identify(conn, { signal: timeoutSignal(args) })
    return identifySummary(result)
  },
  async echo (args) {
    return echo(args)
  },
  async throughput_send (args) {
    return throughputSend(args)
  },
  async dial_bench (args) {
    return dialBench(args)
  },
  async connections (args) {
    const conns = args.peerId != null ? node.getConnections(peerIdFromString(args.peerId)) : node.getConnections()
    return { connections: conns.map(connSummary) }
  },
  async info () {
    return {
      peerId: node.peerId.toString(),
      addrs: node.getMultiaddrs().map(a => a.toString()),
      protocols: node.getProtocols().sort()
    }
  },
  async stats () {
    return { ...stats }
  },
  async stop () {
    await stopNode()
    return {}
  }
}

const moduleContext = {
  node, options, event, log, errorText, target, requirePeerId, timeoutSignal, CommandError,
  peerIdFromString, multiaddr, connSummary
}
for (const mod of modules) {
  if (typeof mod.commands === 'function') {
    for (const [name, fn] of Object.entries(await mod.commands(moduleContext))) {
      if (Object.hasOwn(commands, name)) throw new CommandError(`module command ${name} exists`)
      commands[name] = fn
    }
  }
}

async function runCommand (line) {
  let msg
  try {
    msg = JSON.parse(line)
  } catch (err) {
    emit({ id: null, ok: false, error: `bad JSON command: ${err.message}`, code: 'BadCommand' })
    return
  }
  const id = msg?.id ?? null
  const name = msg?.cmd
  const fn = typeof name === 'string' && Object.hasOwn(commands, name) ? commands[name] : null
  if (fn == null) {
    emit({ id, ok: false, error: `unknown command ${JSON.stringify(name)}`, code: 'BadCommand' })
    return
  }
  try {
    const result = await fn(msg)
    emit({ ...result, id, ok: true })
  } catch (err) {
    emit({ id, ok: false, error: errorText(err), code: err?.name ?? 'Error' })
  }
  if (name === 'stop') process.exit(0)
}

process.on('unhandledRejection', (err) => { log('unhandled rejection', errorText(err), err?.stack ?? '') })
process.on('uncaughtException', (err) => { log('uncaught exception', errorText(err), err?.stack ?? '') })
process.on('SIGTERM', () => { stopNode().finally(() => process.exit(0)) })
process.on('SIGINT', () => { stopNode().finally(() => process.exit(0)) })

const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity, terminal: false })
rl.on('line', (line) => {
  if (line.trim() === '') return
  runCommand(line)
})
rl.on('close', () => {
  stopNode().finally(() => process.exit(0))
})

event('ready', {
  peerId: node.peerId.toString(),
  addrs: node.getMultiaddrs().map(a => a.toString()),
  keyType: privateKey.type,
  protocols: node.getProtocols().sort()
})
