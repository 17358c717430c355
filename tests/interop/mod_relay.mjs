// Circuit relay v2 module for peer.mjs: {"modules": ["relay"], "relay": {...}}.
//
// Always adds js's circuit relay transport (dial /p2p-circuit addresses, accept relayed
// connections). Options under "relay":
//   server (false): also run a relay (hop) service, with
//   reservations: {maxReservations, reservationTtl, defaultDurationLimit, defaultDataLimit}
//     (js's ServerReservationStoreInit; defaultDataLimit as a number of bytes)
//
// Commands:
//   relay_listen {addr}          reserve a slot on the relay at addr (.../p2p/<relay>) and listen
//                                on it; returns our relayed addresses
//   relay_addrs                  our addresses that go through a relay
//   relay_reservations           (server) the peers holding a reservation on us
//   relay_echo {addr, size}      dial addr (a /p2p-circuit address), echo size random bytes on
//                                /p2p/echo over the relayed (limited) connection; returns
//                                {bytes, limited, remoteAddr}

import { circuitRelayServer, circuitRelayTransport } from '@libp2p/circuit-relay-v2'
import { randomFillSync } from 'node:crypto'

const ECHO = '/p2pnet/echo/1.0.0'

export function transports () {
  return [circuitRelayTransport()]
}

export function services (options) {
  const r = options.relay ?? {}
  if (r.server !== true) return {}
  const res = { ...(r.reservations ?? {}) }
  if (typeof res.defaultDataLimit === 'number') res.defaultDataLimit = BigInt(res.defaultDataLimit)
  return { relay: circuitRelayServer({ reservations: res }) }
}

function circuitAddrs (node) {
  return node.getMultiaddrs().map(a => a.toString()).filter(a => a.includes('/p2p-circuit'))
}

export function commands ({ node, multiaddr, CommandError, timeoutSignal }) {
  return {
    async relay_listen (args) {
      if (typeof args.addr !== 'string') throw new CommandError('need "addr" (the relay, with /p2p/)')
      const addr = multiaddr(args.addr.endsWith('/p2p-circuit') ? args.addr : `${args.addr}/p2p-circuit`)
      await node.components.transportManager.listen([addr])
      // the reservation is made when the listener starts; its address appears right after
      const deadline = Date.now() + (args.timeoutMs ?? 10_000)
      while (circuitAddrs(node).length === 0) {
        if (Date.now() > deadline) throw new CommandError('no relayed address after listening', 'TimeoutError')
        await new Promise(resolve => setTimeout(resolve, 50))
      }
      return { addrs: circuitAddrs(node) }
    },
    async relay_addrs () {
      return { addrs: circuitAddrs(node) }
    },
    async relay_reservations () {
      const relay = node.services.relay
      if (relay == null) throw new CommandError('not a relay server ({"relay": {"server": true}})')
      return { peers: [...relay.reservations.keys()].map(String).sort() }
    },
    async relay_echo (args) {
      const size = args.size ?? 1024
      const signal = timeoutSignal(args, 30_000)
      const conn = await node.dial(multiaddr(args.addr), { signal })
      const stream = await conn.newStream(ECHO, { signal, runOnLimitedConnection: true })
      const payload = new Uint8Array(size)
      randomFillSync(payload)
      const chunks = []
      let got = 0
      const done = new Promise((resolve, reject) => {
        stream.addEventListener('message', (evt) => {
          const buf = evt.data.subarray()
          chunks.push(Buffer.from(buf))
          got += buf.byteLength
        })
        stream.addEventListener('end', () => resolve())
        stream.addEventListener('close', (evt) => {
          if (evt.error != null) reject(evt.error)
          else resolve()
        })
      })
      if (!stream.send(payload)) await stream.onDrain()
      await stream.close({ signal })
      await done
      const back = Buffer.concat(chunks)
      if (Buffer.compare(back, Buffer.from(payload)) !== 0) {
        throw new CommandError(`echo mismatch: ${back.length} of ${size} bytes`)
      }
      return { bytes: got, limited: conn.limits != null, remoteAddr: conn.remoteAddr.toString() }
    }
  }
}
