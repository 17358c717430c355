// Gossip relay module for peer.mjs (bench/relay.py): gossipsub configured as mod_gossipsub.mjs does,
// without keeping or announcing every message (the relay benchmark sends tens of thousands).
// {"modules": ["gossip_relay"], "gossipsub": {...}} takes the same options as mod_gossipsub.mjs.
//
// Commands: relay_subscribe {topic}, relay_stats -> {delivered, mesh, peers}.

import { services as gossipsubServices } from './mod_gossipsub.mjs'

export function services (options) {
  return gossipsubServices(options)
}

export function commands (ctx) {
  const pubsub = ctx.node.services.pubsub
  let delivered = 0
  pubsub.addEventListener('gossipsub:message', () => { delivered++ })
  return {
    async relay_subscribe (args) {
      if (typeof args.topic !== 'string' || args.topic === '') throw new ctx.CommandError('need "topic"')
      pubsub.subscribe(args.topic)
      return { topics: pubsub.getTopics() }
    },
    async relay_stats (args) {
      const topic = typeof args.topic === 'string' ? args.topic : ''
      return {
        delivered,
        mesh: pubsub.getMeshPeers(topic).length,
        peers: pubsub.getPeers().length
      }
    }
  }
}
