// kad-dht module for peer.mjs: `{"modules": ["dht"], ...}` adds @libp2p/kad-dht as the `dht`
// service and the dht_* commands below.
//
// Startup options (all optional):
//   dhtClientMode   false      true: client mode (does not advertise the protocol, answers nothing)
//   dhtProtocol     "/ipfs/kad/1.0.0"
//   dhtKBucketSize  20
//   dhtAlpha        (js default)
//
// Validators/selectors are registered for the `agent` namespace (p2pnet's signed presence
// records, verified fully: EIP-191 signature recovered with noble-curves, address compared with
// the key) and for the `test` namespace (any non-empty value up to 1 KiB; the selector prefers the
// lexicographically greatest value), which p2pnet's interop tests register as well.
//
// Keys and values travel as hex (`keyHex`, `valueHex`); provider keys are multihash bytes.

const { kadDHT, passthroughMapper, EventTypes, MessageType } = await import('@libp2p/kad-dht')
const { CID } = await import('multiformats/cid')
const Digest = await import('multiformats/hashes/digest')
const { secp256k1 } = await import('@noble/curves/secp256k1.js')
const { keccak_256: keccak256 } = await import('@noble/hashes/sha3.js')

const AGENT_RECORD_TYPE = 'p2pnet/agent-presence/1'
const MAX_AGENT_RECORD = 4096
const SECP_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141n
const encoder = new TextEncoder()
const decoder = new TextDecoder()

function hexToBytes (hex) {
  const clean = hex.startsWith('0x') ? hex.slice(2) : hex
  if (clean.length % 2 !== 0 || /[^0-9a-fA-F]/.test(clean)) throw new Error(`bad hex string: ${hex}`)
  return Uint8Array.from(Buffer.from(clean, 'hex'))
}

function bytesToHex (bytes) {
  return Buffer.from(bytes).toString('hex')
}

function concat (...parts) {
  return Uint8Array.from(Buffer.concat(parts.map(p => Buffer.from(p))))
}

// -- the agent namespace (see p2pnet/kad/agent_record.py) -------------------------------------

function personalDigest (payload) {
  return keccak256(concat(encoder.encode(`\x19Ethereum Signed Message:\n${payload.length}`), payload))
}

function addressOf (uncompressed) {
  return '0x' + bytesToHex(keccak256(uncompressed.subarray(1)).subarray(12))
}

function canonicalPayload (obj) {
  const sorted = {}
  for (const k of Object.keys(obj).sort()) sorted[k] = obj[k]
  return encoder.encode(JSON.stringify(sorted))
}

async function validateAgent (key, value) {
  const keyText = decoder.decode(key)
  const m = /^\/agent\/(0x[0-9a-f]{40})$/.exec(keyText)
  if (m == null) throw new Error('agent record key must be /agent/0x<40 lowercase hex digits>')
  if (value.length > MAX_AGENT_RECORD) throw new Error('agent record too large')
  if (value.length <= 65) throw new Error('agent record too short')
  const sig = value.subarray(0, 65)
  const payload = value.subarray(65)
  const v = sig[64]
  const s = BigInt('0x' + bytesToHex(sig.subarray(32, 64)))
  if ((v !== 27 && v !== 28) || s === 0n || s > SECP_N / 2n) throw new Error('agent record signature malformed')
  const recovered = secp256k1.Signature.fromBytes(concat([v - 27], sig.subarray(0, 64)), 'recovered')
    .recoverPublicKey(personalDigest(payload))
    .toBytes(false)
  if (addressOf(recovered) !== m[1]) throw new Error('agent record is not signed by the key\'s address')
  let obj
  try {
    obj = JSON.parse(decoder.decode(payload))
  } catch {
    throw new Error('agent record payload is not JSON')
  }
  const fields = ['address', 'addrs', 'peer_id', 'seq', 'timestamp', 'type']
  if (obj == null || typeof obj !== 'object' || Object.keys(obj).sort().join() !== fields.join()) {
    throw new Error('agent record payload has the wrong fields')
  }
  if (Buffer.compare(canonicalPayload(obj), payload) !== 0) throw new Error('agent record payload is not canonical')
  if (obj.type !== AGENT_RECORD_TYPE || obj.address !== m[1]) throw new Error('agent record payload mismatch')
  if (!Number.isSafeInteger(obj.seq) || obj.seq < 0 || !Number.isSafeInteger(obj.timestamp) || obj.timestamp < 0) {
    throw new Error('agent record seq/timestamp must be non-negative integers')
  }
  if (!Array.isArray(obj.addrs) || obj.addrs.some(a => typeof a !== 'string')) throw new Error('agent record addrs')
}

function agentRank (value) {
  const obj = JSON.parse(decoder.decode(value.subarray(65)))
  return [obj.seq, obj.timestamp]
}

function selectAgent (key, values) {
  let best = 0
  for (let i = 1; i < values.length; i++) {
    const [s, t] = agentRank(values[i])
    const [bs, bt] = agentRank(values[best])
    if (s > bs || (s === bs && t > bt)) best = i
  }
  return best
}

function signAgentRecord ({ secretHex, peerId, addrs = [], seq, timestamp }) {
  const secret = hexToBytes(secretHex)
  const address = addressOf(secp256k1.getPublicKey(secret, false))
  const payload = canonicalPayload({
    addrs,
    address,
    peer_id: peerId,
    seq,
    timestamp: timestamp ?? Math.floor(Date.now() / 1000),
    type: AGENT_RECORD_TYPE
  })
  const sig = secp256k1.sign(personalDigest(payload), secret, { prehash: false, format: 'recovered' })
  // noble: recovery byte first; Ethereum: r || s || v
  const value = concat(sig.subarray(1), [27 + sig[0]], payload)
  return { keyHex: bytesToHex(encoder.encode(`/agent/${address}`)), valueHex: bytesToHex(value) }
}

// -- the test namespace -------------------------------------------------------------------------

function validateTest (key, value) {
  if (value.length === 0 || value.length > 1024) throw new Error('test records hold 1..1024 bytes')
}

function selectTest (key, values) {
  let best = 0
  for (let i = 1; i < values.length; i++) {
    if (Buffer.compare(Buffer.from(values[i]), Buffer.from(values[best])) > 0) best = i
  }
  return best
}

// -- module interface ---------------------------------------------------------------------------

export function services (options) {
  return {
    dht: kadDHT({
      clientMode: options.dhtClientMode === true,
      protocol: options.dhtProtocol ?? '/ipfs/kad/1.0.0',
      peerInfoMapper: passthroughMapper,
      allowQueryWithZeroPeers: true,
      ...(options.dhtKBucketSize != null ? { kBucketSize: options.dhtKBucketSize } : {}),
      ...(options.dhtAlpha != null ? { alpha: options.dhtAlpha } : {}),
      validators: { agent: validateAgent, test: validateTest },
      selectors: { agent: selectAgent, test: selectTest }
    })
  }
}

function peerInfoJson (info) {
  return { peerId: info.id.toString(), addrs: info.multiaddrs.map(a => a.toString()) }
}

function cidOf (keyHex) {
  return CID.createV1(0x55, Digest.decode(hexToBytes(keyHex)))
}

export function commands (ctx) {
  const { node, requirePeerId, timeoutSignal, CommandError } = ctx
  const dht = () => node.services.dht

  function keyOf (args) {
    if (typeof args.keyHex === 'string') return hexToBytes(args.keyHex)
    if (typeof args.key === 'string') return encoder.encode(args.key)
    if (typeof args.peerId === 'string') return requirePeerId(args).toMultihash().bytes
    throw new CommandError('need "keyHex", "key" or "peerId"')
  }

  return {
    async dht_info () {
      return {
        mode: dht().getMode(),
        size: dht().routingTable.size,
        peers: [...dht().routingTable.kb.toIterable()].map(p => p.peerId.toString())
      }
    },
    async dht_routing_table () {
      return { peers: [...dht().routingTable.kb.toIterable()].map(p => p.peerId.toString()) }
    },
    async dht_set_mode (args) {
      await dht().setMode(args.mode)
      return { mode: dht().getMode() }
    },
    async dht_refresh (args) {
      await dht().refreshRoutingTable({ signal: timeoutSignal(args) })
      return { size: dht().routingTable.size }
    },
    async dht_find_peer (args) {
      const peerId = requirePeerId(args)
      const signal = timeoutSignal(args)
      for await (const ev of dht().findPeer(peerId, { signal, useCache: args.useCache !== false })) {
        if (ev.name === 'FINAL_PEER') return peerInfoJson(ev.peer)
      }
      throw new CommandError(`peer ${peerId} not found`, 'NotFoundError')
    },
    async dht_closest_peers (args) {
      const peers = []
      for await (const ev of dht().getClosestPeers(keyOf(args), { signal: timeoutSignal(args) })) {
        if (ev.name === 'FINAL_PEER') peers.push(ev.peer.id.toString())
      }
      return { peers }
    },
    async dht_put (args) {
      const key = keyOf(args)
      const value = hexToBytes(args.valueHex)
      const stored = new Set()
      const errors = []
      for await (const ev of dht().put(key, value, { signal: timeoutSignal(args) })) {
        if (ev.name === 'PEER_RESPONSE' && ev.messageType === MessageType.PUT_VALUE && ev.record != null &&
            Buffer.compare(Buffer.from(ev.record.value), Buffer.from(value)) === 0) {
          stored.add(ev.from.toString())
        } else if (ev.name === 'QUERY_ERROR') {
          errors.push(`${ev.from}: ${ev.error?.message}`)
        }
      }
      return { peers: [...stored].sort(), errors }
    },
    async dht_get (args) {
      let best = null
      for await (const ev of dht().get(keyOf(args), { signal: timeoutSignal(args) })) {
        if (ev.name === 'VALUE') best = ev
      }
      if (best == null) throw new CommandError('no value found', 'NotFoundError')
      return { valueHex: bytesToHex(best.value), from: best.from.toString() }
    },
    async dht_provide (args) {
      let sent = 0
      for await (const ev of dht().provide(cidOf(args.keyHex), { signal: timeoutSignal(args) })) {
        if (ev.name === 'PEER_RESPONSE' && ev.messageType === MessageType.ADD_PROVIDER) sent++
      }
      return { sent }
    },
    async dht_find_providers (args) {
      const want = args.count ?? 20
      const found = new Map()
      const signal = timeoutSignal(args)
      for await (const ev of dht().findProviders(cidOf(args.keyHex), { signal })) {
        if (ev.name === 'PROVIDER') {
          for (const p of ev.providers) {
            const prev = found.get(p.id.toString())
            if (prev == null || prev.addrs.length === 0) found.set(p.id.toString(), peerInfoJson(p))
          }
          if (found.size >= want) break
        }
      }
      return { providers: [...found.values()] }
    },
    async dht_agent_record (args) {
      return signAgentRecord(args)
    },
    async dht_validate (args) {
      const key = hexToBytes(args.keyHex)
      const value = hexToBytes(args.valueHex)
      const ns = decoder.decode(key).split('/')[1]
      const fn = dht().validators[ns]
      if (fn == null) return { valid: false, error: `no validator for ${ns}` }
      try {
        await fn(key, value)
        return { valid: true }
      } catch (err) {
        return { valid: false, error: err.message }
      }
    }
  }
}

export { EventTypes }
