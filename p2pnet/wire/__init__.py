"""Wire encodings shared by every layer: unsigned varints and length-prefixed framing."""
