// AutoNAT v2 module for peer.mjs: {"modules": ["autonat"], "autonat": {...}}.
//
// Adds @libp2p/autonat-v2 (client and server in one service). Options under "autonat" are
// js's AutoNATv2ServiceInit (e.g. startupDelay, refreshInterval, timeout in ms).
// Command: autonat_addrs -> our addresses with js's verdicts {addr, verified, type, expires}.
// js's server refuses private and loopback addresses and its client never asks about them, so
// the interop test runs in a network namespace whose loopback carries a global address.

import { autoNATv2 } from '@libp2p/autonat-v2'

export function services (options) {
  return { autonat: autoNATv2({ startupDelay: 100, ...(options.autonat ?? {}) }) }
}

export function commands ({ node }) {
  return {
    async autonat_addrs () {
      return {
        addrs: node.components.addressManager.getAddressesWithMetadata().map(a => ({
          addr: a.multiaddr.toString(),
          verified: a.verified,
          type: a.type,
          expires: a.expires
        }))
      }
    }
  }
}
