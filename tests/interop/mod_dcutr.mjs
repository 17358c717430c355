// DCUtR module for peer.mjs: {"modules": ["relay", "dcutr"], "dcutr": {...}}.
//
// Adds js-libp2p's @libp2p/dcutr service (hole punching over a relayed connection). Options
// under "dcutr" are its init options ({timeout, retries}). js dials from an ephemeral port
// unless the "tcp" startup option binds one ({"dialOpts": {"localPort": N}}), and offers in
// CONNECT only the addresses its address manager lists (announce one with "appendAnnounce").
//
// Commands:
//   dcutr_direct {peerId, timeoutMs}   wait until a connection to peerId is direct (not
//                                       /p2p-circuit); returns it and every connection to the peer

import { dcutr } from '@libp2p/dcutr'

export function services (options) {
  return { dcutr: dcutr(options.dcutr ?? {}) }
}

export function commands ({ node, CommandError, peerIdFromString, connSummary }) {
  return {
    async dcutr_direct (args) {
      if (typeof args.peerId !== 'string') throw new CommandError('need "peerId"')
      const peer = peerIdFromString(args.peerId)
      const deadline = Date.now() + (args.timeoutMs ?? 20_000)
      while (true) {
        const conns = node.getConnections(peer)
        const direct = conns.find(c => !c.remoteAddr.toString().includes('/p2p-circuit'))
        if (direct != null) {
          return { direct: connSummary(direct), connections: conns.map(connSummary) }
        }
        if (Date.now() > deadline) {
          throw new CommandError(`no direct connection to ${args.peerId}`, 'TimeoutError')
        }
        await new Promise(resolve => setTimeout(resolve, 50))
      }
    }
  }
}
