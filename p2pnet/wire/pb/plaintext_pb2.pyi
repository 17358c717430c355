# mypy: disable-error-code="type-arg"
from p2pnet.wire.pb import keys_pb2 as _keys_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Exchange(_message.Message):
    __slots__ = ("id", "pubkey")
    ID_FIELD_NUMBER: _ClassVar[int]
    PUBKEY_FIELD_NUMBER: _ClassVar[int]
    id: bytes
    pubkey: _keys_pb2.PublicKey
    def __init__(self, id: _Optional[bytes] = ..., pubkey: _Optional[_Union[_keys_pb2.PublicKey, _Mapping]] = ...) -> None: ...
