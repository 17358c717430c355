"""The generated protobuf modules: up to date with their .proto sources, and round-trips."""

from __future__ import annotations

from pathlib import Path

import pytest
from gen_protos_script import load_gen_script

from p2pnet.crypto import KeyPair, KeyType
from p2pnet.crypto.keys import unmarshal_public_key
from p2pnet.wire.pb import envelope_pb2, identify_pb2, keys_pb2, noise_pb2, peer_record_pb2

ROOT = Path(__file__).resolve().parent.parent
PB_DIR = ROOT / "p2pnet" / "wire" / "pb"


def test_generated_files_are_up_to_date(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools.protoc")
    gen = load_gen_script()
    written = gen.generate(tmp_path)
    names = sorted(p.name for p in written)
    committed = sorted(p.name for p in PB_DIR.iterdir() if p.name.endswith(("_pb2.py", "_pb2.pyi")))
    assert names == committed
    protos = sorted(p.stem for p in PB_DIR.glob("*.proto"))
    assert sorted({n.split("_pb2")[0] for n in names}) == protos
    for name in names:
        fresh = (tmp_path / name).read_bytes()
        assert fresh == (PB_DIR / name).read_bytes(), (
            f"{name} is stale: run `python scripts/gen_protos.py`"
        )


def test_fix_imports() -> None:
    gen = load_gen_script()
    text = "import os\nimport keys_pb2 as keys__pb2\nfrom x import y_pb2 as z\n"
    assert gen.fix_imports(text) == (
        "import os\nfrom p2pnet.wire.pb import keys_pb2 as keys__pb2\nfrom x import y_pb2 as z\n"
    )


def test_no_bare_cross_file_imports() -> None:
    for path in PB_DIR.glob("*_pb2.py*"):
        for line in path.read_text().splitlines():
            assert not (line.startswith("import ") and "_pb2" in line), (path, line)


def test_keys_message_matches_hand_encoding() -> None:
    for key_type in (KeyType.Ed25519, KeyType.Secp256k1):
        pub = KeyPair.generate(key_type).public_key
        msg = keys_pb2.PublicKey(Type=int(key_type), Data=pub.to_bytes())  # type: ignore[arg-type]
        assert msg.SerializeToString() == pub.to_protobuf()
        parsed = keys_pb2.PublicKey.FromString(pub.to_protobuf())
        assert parsed.Type == int(key_type) and parsed.Data == pub.to_bytes()
    priv = KeyPair.generate().private_key
    pmsg = keys_pb2.PrivateKey(Type=keys_pb2.Ed25519, Data=priv.to_bytes())
    assert pmsg.SerializeToString() == priv.to_protobuf()
    assert [v.name for v in keys_pb2.KeyType.DESCRIPTOR.values] == [k.name for k in KeyType]
    assert [v.number for v in keys_pb2.KeyType.DESCRIPTOR.values] == [int(k) for k in KeyType]


def test_keys_required_fields() -> None:
    msg = keys_pb2.PublicKey(Data=b"x")
    assert not msg.IsInitialized()


def test_noise_payload_roundtrip() -> None:
    kp = KeyPair.from_ed25519_seed(bytes(31) + b"\x01")
    payload = noise_pb2.NoiseHandshakePayload(
        identity_key=kp.public_key.to_protobuf(),
        identity_sig=kp.sign(b"noise-libp2p-static-key:" + bytes(32)),
        extensions=noise_pb2.NoiseExtensions(
            webtransport_certhashes=[b"\x12\x20" + bytes(32)],
            stream_muxers=["/yamux/1.0.0"],
        ),
    )
    data = payload.SerializeToString()
    # fields 1, 2 and 4 as the spec numbers them
    assert data[0] == 0x0A and data[2 + data[1]] == 0x12
    back = noise_pb2.NoiseHandshakePayload.FromString(data)
    assert back == payload
    assert unmarshal_public_key(back.identity_key) == kp.public_key
    assert list(back.extensions.stream_muxers) == ["/yamux/1.0.0"]
    empty = noise_pb2.NoiseHandshakePayload.FromString(b"")
    assert not empty.HasField("extensions") and not empty.HasField("identity_key")


def test_identify_roundtrip() -> None:
    msg = identify_pb2.Identify(
        protocolVersion="ipfs/0.1.0",
        agentVersion="p2pnet/0.1.0",
        publicKey=KeyPair.generate().public_key.to_protobuf(),
        listenAddrs=[b"\x04\x7f\x00\x00\x01\x06\x10\x00"],
        observedAddr=b"\x04\x7f\x00\x00\x01\x06\x10\x01",
        protocols=["/ipfs/id/1.0.0", "/ipfs/ping/1.0.0"],
        signedPeerRecord=b"envelope",
    )
    data = msg.SerializeToString()
    back = identify_pb2.Identify.FromString(data)
    assert back == msg
    numbers = {f.name: f.number for f in identify_pb2.Identify.DESCRIPTOR.fields}
    assert numbers == {
        "protocolVersion": 5,
        "agentVersion": 6,
        "publicKey": 1,
        "listenAddrs": 2,
        "observedAddr": 4,
        "protocols": 3,
        "signedPeerRecord": 8,
    }
    partial = identify_pb2.Identify.FromString(b"\x1a\x0e/ipfs/id/1.0.0")
    assert list(partial.protocols) == ["/ipfs/id/1.0.0"]
    assert not partial.HasField("agentVersion")


def test_envelope_and_peer_record_roundtrip() -> None:
    kp = KeyPair.generate()
    record = peer_record_pb2.PeerRecord(
        peer_id=b"\x00\x24" + kp.public_key.to_protobuf(),
        seq=1_700_000_000_000,
        addresses=[
            peer_record_pb2.PeerRecord.AddressInfo(multiaddr=b"\x04\x7f\x00\x00\x01\x06\x10\x00")
        ],
    )
    rec_bytes = record.SerializeToString()
    assert peer_record_pb2.PeerRecord.FromString(rec_bytes) == record
    env = envelope_pb2.Envelope(
        public_key=keys_pb2.PublicKey(Type=keys_pb2.Ed25519, Data=kp.public_key.to_bytes()),
        payload_type=b"\x03\x01",
        payload=rec_bytes,
        signature=kp.sign(rec_bytes),
    )
    data = env.SerializeToString()
    back = envelope_pb2.Envelope.FromString(data)
    assert back == env
    assert back.public_key.SerializeToString() == kp.public_key.to_protobuf()
    assert {f.name: f.number for f in envelope_pb2.Envelope.DESCRIPTOR.fields} == {
        "public_key": 1,
        "payload_type": 2,
        "payload": 3,
        "signature": 5,
    }
    assert {f.name: f.number for f in peer_record_pb2.PeerRecord.DESCRIPTOR.fields} == {
        "peer_id": 1,
        "seq": 2,
        "addresses": 3,
    }


def test_descriptor_names_are_namespaced() -> None:
    # Unique file and package names keep us clear of other protobuf users in one process.
    for module in (keys_pb2, noise_pb2, identify_pb2, envelope_pb2, peer_record_pb2):
        assert module.DESCRIPTOR.name.startswith("p2pnet/wire/pb/")
        assert module.DESCRIPTOR.package.startswith("p2pnet.")
