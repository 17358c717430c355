// Gossipsub module for peer.mjs: {"modules": ["gossipsub"], "gossipsub": {...}}.
//
// Options (all optional) under "gossipsub":
//   heartbeatInterval (ms, 1000), D, Dlo, Dhi, Dlazy, Dscore, Dout, floodPublish (true),
//   doPX (false), pruneBackoff (ms), unsubscribeBackoff (ms), emitSelf (true),
//   signaturePolicy ("StrictSign" | "StrictNoSign"),
//   msgId: "from-seqno" (default: from peer-ID bytes ‖ 8-byte seqno, p2pnet's and go's default)
//          | "js-default" (js's own: protobuf public key ‖ seqno),
//   ipColocationThreshold (1000: all test peers share 127.0.0.1), scoreParams, scoreThresholds
//   (merged into js's), events (true: emit ps_message / ps_graft / ps_prune events).
//
// Commands: ps_subscribe {topic}, ps_unsubscribe {topic}, ps_publish {topic, dataHex | data},
// ps_messages {topic?, clear?}, ps_mesh {topic}, ps_peers {topic?}, ps_topics, ps_scores,
// ps_protocol {peerId}.

import { gossipsub } from '@libp2p/gossipsub'

function bytesToHex (b) {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex')
}

function seqnoBytes (seqno) {
  const out = new Uint8Array(8)
  new DataView(out.buffer).setBigUint64(0, seqno, false)
  return out
}

// from ‖ seqno: the spec's default message ID (go-libp2p-pubsub, p2pnet).
function msgIdFromSeqno (msg) {
  if (msg.type !== 'signed') throw new Error('from ‖ seqno needs signed messages')
  const from = msg.from.toMultihash().bytes
  const seq = seqnoBytes(msg.sequenceNumber)
  const id = new Uint8Array(from.length + seq.length)
  id.set(from, 0)
  id.set(seq, from.length)
  return id
}

export function services (options) {
  const g = options.gossipsub ?? {}
  const init = {
    allowPublishToZeroTopicPeers: true,
    emitSelf: g.emitSelf ?? true,
    floodPublish: g.floodPublish ?? true,
    doPX: g.doPX ?? false,
    heartbeatInterval: g.heartbeatInterval ?? 1000,
    scoreParams: {
      IPColocationFactorThreshold: g.ipColocationThreshold ?? 1000,
      ...(g.scoreParams ?? {})
    },
    scoreThresholds: { ...(g.scoreThresholds ?? {}) }
  }
  for (const k of ['D', 'Dlo', 'Dhi', 'Dlazy', 'Dscore', 'Dout', 'pruneBackoff', 'fanoutTTL',
    'mcacheLength', 'mcacheGossip', 'seenTTL', 'gossipFactor', 'idontwantMinDataSize']) {
    if (g[k] != null) init[k] = g[k]
  }
  if (g.unsubscribeBackoff != null) init.unsubcribeBackoff = g.unsubscribeBackoff // sic, js's name
  if (g.signaturePolicy != null) init.globalSignaturePolicy = g.signaturePolicy
  if ((g.msgId ?? 'from-seqno') === 'from-seqno') init.msgIdFn = msgIdFromSeqno
  return { pubsub: gossipsub(init) }
}

export function commands (ctx) {
  const { node, options, event, CommandError, peerIdFromString } = ctx
  const g = options.gossipsub ?? {}
  const emitEvents = g.events !== false
  const pubsub = node.services.pubsub
  const received = [] // every message delivered to the application, in order

  pubsub.addEventListener('gossipsub:message', (evt) => {
    const { msg, msgId, propagationSource } = evt.detail
    const rec = {
      topic: msg.topic,
      dataHex: bytesToHex(msg.data),
      from: msg.type === 'signed' ? msg.from.toString() : null,
      seqno: msg.type === 'signed' ? msg.sequenceNumber.toString() : null,
      msgId,
      propagationSource: propagationSource.toString()
    }
    received.push(rec)
    if (emitEvents) event('ps_message', rec)
  })
  for (const name of ['graft', 'prune']) {
    pubsub.addEventListener(`gossipsub:${name}`, (evt) => {
      if (emitEvents) event(`ps_${name}`, { peerId: evt.detail.peerId.toString(), topic: evt.detail.topic, direction: evt.detail.direction })
    })
  }

  function topicArg (args) {
    if (typeof args.topic !== 'string' || args.topic === '') throw new CommandError('need "topic"')
    return args.topic
  }

  return {
    async ps_subscribe (args) {
      pubsub.subscribe(topicArg(args))
      return { topics: pubsub.getTopics() }
    },
    async ps_unsubscribe (args) {
      pubsub.unsubscribe(topicArg(args))
      return { topics: pubsub.getTopics() }
    },
    async ps_publish (args) {
      const topic = topicArg(args)
      let data
      if (typeof args.dataHex === 'string') data = Uint8Array.from(Buffer.from(args.dataHex, 'hex'))
      else if (typeof args.data === 'string') data = new TextEncoder().encode(args.data)
      else throw new CommandError('need "dataHex" or "data"')
      const res = await pubsub.publish(topic, data)
      return { recipients: res.recipients.map(p => p.toString()) }
    },
    async ps_messages (args) {
      const out = args.topic != null ? received.filter(m => m.topic === args.topic) : [...received]
      if (args.clear === true) received.length = 0
      return { messages: out }
    },
    async ps_mesh (args) {
      return { peers: pubsub.getMeshPeers(topicArg(args)).map(String).sort() }
    },
    async ps_peers (args) {
      const peers = args.topic != null ? pubsub.getSubscribers(args.topic) : pubsub.getPeers()
      return { peers: peers.map(String).sort() }
    },
    async ps_topics () {
      return { topics: pubsub.getTopics() }
    },
    async ps_scores () {
      const scores = {}
      for (const p of pubsub.getPeers()) scores[p.toString()] = pubsub.getScore(p.toString())
      return { scores }
    },
    async ps_protocol (args) {
      const id = peerIdFromString(args.peerId).toString()
      return { protocol: pubsub.streamsOutbound.get(id)?.protocol ?? null }
    }
  }
}
