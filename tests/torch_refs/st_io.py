"""Read and write the safetensors format by hand (Debian has no Python
`safetensors` package): a u64 little-endian header length, a JSON header
(padded to 8 bytes) naming each tensor's dtype, shape and byte range, then
the raw little-endian bytes. Shared by the generator scripts in this folder."""
import json
import struct

import torch

DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.int64: "I64"}
TORCH_DTYPES = {v: k for k, v in DTYPES.items()}


def write_safetensors(path, tensors, metadata=None):
    """tensors: {name: tensor}; float32/float64/int64 kept, others become float32."""
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        t = t.detach().contiguous()
        if t.dtype not in DTYPES:
            t = t.to(torch.float32)
        data = t.numpy().tobytes()
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def read_safetensors(path):
    """{name: tensor} for the F32/F64/I64 tensors of a file."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, v in header.items():
        if name == "__metadata__" or v["dtype"] not in TORCH_DTYPES:
            continue
        b, e = v["data_offsets"]
        out[name] = torch.frombuffer(bytearray(data[b:e]),
                                     dtype=TORCH_DTYPES[v["dtype"]]).reshape(v["shape"])
    return out
