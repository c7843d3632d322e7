"""
A small Parquet reader in the standard library: the HuggingFace hub stores every benchmark that data/fetch.py
downloads as Parquet, and the project's runtime dependencies (torch, sentencepiece, numpy, safetensors, tqdm) include
no Parquet reader. It reads what `datasets`/pyarrow write for the hub:

    rows = read_parquet(path_or_bytes)   # [{column: value}], nested structs as dicts, lists as lists

Supported: the thrift compact footer; row groups; data pages v1 and v2 and dictionary pages; PLAIN and dictionary
(RLE_DICTIONARY / PLAIN_DICTIONARY) encodings, RLE/bit-packed levels; SNAPPY, GZIP or no compression; BOOLEAN,
INT32, INT64, FLOAT, DOUBLE, BYTE_ARRAY (str when annotated UTF8/STRING) and FIXED_LEN_BYTE_ARRAY; required, optional
and repeated fields, structs, and lists in the 3-level LIST form and the legacy 2-level forms (Dremel record
assembly). Anything else (ZSTD, DELTA encodings, INT96, maps) is refused with a ValueError naming it.
tests/test_fetch.py reads files pyarrow wrote in every combination of these and compares with pyarrow's rows.
"""
import struct
import zlib
from pathlib import Path

MAGIC = b"PAR1"
REQUIRED, OPTIONAL, REPEATED = 0, 1, 2
PHYSICAL = {0: "BOOLEAN", 1: "INT32", 2: "INT64", 3: "INT96", 4: "FLOAT", 5: "DOUBLE", 6: "BYTE_ARRAY",
            7: "FIXED_LEN_BYTE_ARRAY"}
CODECS = {0: "UNCOMPRESSED", 1: "SNAPPY", 2: "GZIP", 3: "LZO", 4: "BROTLI", 5: "LZ4", 6: "ZSTD", 7: "LZ4_RAW"}
ENCODINGS = {0: "PLAIN", 2: "PLAIN_DICTIONARY", 3: "RLE", 4: "BIT_PACKED", 5: "DELTA_BINARY_PACKED",
             6: "DELTA_LENGTH_BYTE_ARRAY", 7: "DELTA_BYTE_ARRAY", 8: "RLE_DICTIONARY", 9: "BYTE_STREAM_SPLIT"}
UTF8, LIST_CONVERTED, ENUM, JSON_CONVERTED = 0, 3, 4, 19  # converted_type codes that matter here


# -----------------------------------------------------------------------------
# thrift compact protocol: a struct is read into {field id: value}

class Thrift:
    def __init__(self, buf, pos=0):
        self.buf, self.pos = buf, pos

    def varint(self):
        out = shift = 0
        while True:
            b = self.buf[self.pos]
            self.pos += 1
            out |= (b & 0x7F) << shift
            if b < 0x80:
                return out
            shift += 7

    def zigzag(self):
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def value(self, t):
        if t in (1, 2):  # a bool field carries its value in the type nibble
            return t == 1
        if t == 3:
            self.pos += 1
            return struct.unpack_from("<b", self.buf, self.pos - 1)[0]
        if t in (4, 5, 6):
            return self.zigzag()
        if t == 7:
            self.pos += 8
            return struct.unpack_from("<d", self.buf, self.pos - 8)[0]
        if t == 8:
            n = self.varint()
            self.pos += n
            return bytes(self.buf[self.pos - n:self.pos])
        if t in (9, 10):
            head = self.buf[self.pos]
            self.pos += 1
            n, et = head >> 4, head & 0x0F
            if n == 15:
                n = self.varint()
            if et in (1, 2):  # bools inside a list are one byte each
                self.pos += n
                return [b == 1 for b in self.buf[self.pos - n:self.pos]]
            return [self.value(et) for _ in range(n)]
        if t == 11:
            n = self.varint()
            if n == 0:
                return {}
            kv = self.buf[self.pos]
            self.pos += 1
            return {self.value(kv >> 4): self.value(kv & 0x0F) for _ in range(n)}
        if t == 12:
            return self.struct()
        raise ValueError(f"thrift type {t} is not valid in a Parquet footer")

    def struct(self):
        out, last = {}, 0
        while True:
            head = self.buf[self.pos]
            self.pos += 1
            if head == 0:
                return out
            delta, t = head >> 4, head & 0x0F
            last = last + delta if delta else self.zigzag()
            out[last] = self.value(t)


# -----------------------------------------------------------------------------
# compression

def snappy_decompress(buf):
    """Raw snappy (the format Parquet uses: no framing): a varint length, then literals and back-references."""
    t = Thrift(buf)
    n = t.varint()
    out, pos, end = bytearray(), t.pos, len(buf)
    while pos < end:
        tag = buf[pos]
        pos += 1
        kind = tag & 3
        if kind == 0:  # literal
            length = tag >> 2
            if length >= 60:
                extra = length - 59
                length = int.from_bytes(buf[pos:pos + extra], "little")
                pos += extra
            length += 1
            out += buf[pos:pos + length]
            pos += length
            continue
        if kind == 1:
            length, offset = ((tag >> 2) & 7) + 4, ((tag >> 5) << 8) | buf[pos]
            pos += 1
        elif kind == 2:
            length, offset = (tag >> 2) + 1, int.from_bytes(buf[pos:pos + 2], "little")
            pos += 2
        else:
            length, offset = (tag >> 2) + 1, int.from_bytes(buf[pos:pos + 4], "little")
            pos += 4
        if offset == 0 or offset > len(out):
            raise ValueError("corrupt snappy data (a back-reference before the start)")
        start = len(out) - offset
        if offset >= length:
            out += out[start:start + length]
        else:  # the copy overlaps what it writes: repeat the pattern
            chunk = out[start:]
            out += (chunk * (length // offset + 1))[:length]
    if len(out) != n:
        raise ValueError(f"corrupt snappy data ({len(out)} bytes instead of {n})")
    return bytes(out)


def decompress(data, codec, size):
    if codec == 0:
        return data
    if codec == 1:
        return snappy_decompress(data)
    if codec == 2:
        return zlib.decompress(data, 47)  # 32 + 15: a gzip or zlib header, detected
    raise ValueError(f"{CODECS.get(codec, codec)} compression is not supported (SNAPPY, GZIP and none are)")


# -----------------------------------------------------------------------------
# encodings

def rle_hybrid(buf, pos, end, width, count):
    """The RLE / bit-packed hybrid encoding of levels and dictionary indices: `count` ints from buf[pos:end]"""
    out, mask, nbytes = [], (1 << width) - 1, (width + 7) // 8
    while len(out) < count and pos < end:
        t = Thrift(buf, pos)
        head = t.varint()
        pos = t.pos
        if head & 1:  # bit-packed: (head >> 1) groups of 8 values, least significant bits first
            n = (head >> 1) * 8
            x = int.from_bytes(buf[pos:pos + (head >> 1) * width], "little")
            pos += (head >> 1) * width
            out += [(x >> (i * width)) & mask for i in range(n)]
        else:  # a run of one value
            out += [int.from_bytes(buf[pos:pos + nbytes], "little")] * (head >> 1)
            pos += nbytes
    if len(out) < count:
        raise ValueError("corrupt RLE data (fewer values than the page holds)")
    return out[:count]


def plain(buf, pos, ptype, count, type_length):
    """count PLAIN-encoded values of a physical type from buf[pos:]"""
    name = PHYSICAL.get(ptype)
    if name == "BOOLEAN":
        x = int.from_bytes(buf[pos:pos + (count + 7) // 8], "little")
        return [bool((x >> i) & 1) for i in range(count)]
    fmt = {"INT32": "i", "INT64": "q", "FLOAT": "f", "DOUBLE": "d"}.get(name)
    if fmt:
        return list(struct.unpack_from(f"<{count}{fmt}", buf, pos))
    if name == "BYTE_ARRAY":
        out = []
        for _ in range(count):
            n = int.from_bytes(buf[pos:pos + 4], "little")
            out.append(bytes(buf[pos + 4:pos + 4 + n]))
            pos += 4 + n
        return out
    if name == "FIXED_LEN_BYTE_ARRAY":
        return [bytes(buf[pos + i * type_length:pos + (i + 1) * type_length]) for i in range(count)]
    raise ValueError(f"physical type {name or ptype} is not supported")


# -----------------------------------------------------------------------------
# schema

class Node:
    def __init__(self, el):
        self.name = el[4].decode()
        self.repetition = el.get(3, REQUIRED)
        self.ptype, self.type_length = el.get(1), el.get(2, 0)
        self.converted, self.logical = el.get(6), el.get(10, {})
        self.children = []

    @property
    def is_list(self):
        return self.converted == LIST_CONVERTED or 3 in self.logical

    @property
    def is_text(self):
        return self.converted in (UTF8, ENUM, JSON_CONVERTED) or any(k in self.logical for k in (1, 4, 12))  # STRING, ENUM, JSON


def schema_tree(elements):
    """The flat depth-first SchemaElement list -> the root Node"""
    nodes = [Node(el) for el in elements]
    it = iter(range(1, len(nodes)))

    def attach(i):
        for _ in range(elements[i].get(5, 0)):
            j = next(it)
            nodes[i].children.append(nodes[j])
            attach(j)
    attach(0)
    return nodes[0]


def leaf_paths(root):
    """[[node, ...]] from the root's child down to each leaf, in column order"""
    out = []

    def walk(node, path):
        if not node.children:
            out.append(path)
        for c in node.children:
            walk(c, path + [c])
    for c in root.children:
        walk(c, [c])
    return out


# -----------------------------------------------------------------------------
# column chunks -> (repetition level, definition level, value) triples -> rows

def read_column(buf, meta, path, where):
    """The (rep, def, value) triples of one column chunk; value is None where def < max_def"""
    max_def = sum(n.repetition != REQUIRED for n in path)
    max_rep = sum(n.repetition == REPEATED for n in path)
    leaf = path[-1]
    codec, ptype = meta.get(4, 0), meta[1]
    start = min(o for o in (meta.get(11), meta[9]) if o)  # the dictionary page, when there is one, comes first
    pos, end = start, start + meta[7]
    total, seen, dictionary, triples = meta[5], 0, None, []
    while seen < total and pos < end:
        t = Thrift(buf, pos)
        head = t.struct()
        pos = t.pos
        size = head[3]
        page = buf[pos:pos + size]
        pos += size
        kind = head[1]
        if kind == 2:  # dictionary page
            dh = head[7]
            data = decompress(page, codec, head[2])
            dictionary = plain(data, 0, ptype, dh[1], leaf.type_length)
            continue
        if kind == 0:
            dh = head[5]
            n, enc = dh[1], dh[2]
            data = decompress(page, codec, head[2])
            p = 0
            reps = defs = None
            if max_rep:
                ln = int.from_bytes(data[p:p + 4], "little")
                reps = rle_hybrid(data, p + 4, p + 4 + ln, max_rep.bit_length(), n)
                p += 4 + ln
            if max_def:
                ln = int.from_bytes(data[p:p + 4], "little")
                defs = rle_hybrid(data, p + 4, p + 4 + ln, max_def.bit_length(), n)
                p += 4 + ln
        elif kind == 3:
            dh = head[8]
            n, enc, dl, rl = dh[1], dh[4], dh[5], dh[6]
            reps = rle_hybrid(page, 0, rl, max_rep.bit_length(), n) if max_rep else None
            defs = rle_hybrid(page, rl, rl + dl, max_def.bit_length(), n) if max_def else None
            rest = page[rl + dl:]
            data = decompress(rest, codec, head[2] - rl - dl) if dh.get(7, True) else rest
            p = 0
        else:
            continue  # an index page: nothing to read
        reps = reps or [0] * n
        defs = defs or [max_def] * n
        present = sum(d == max_def for d in defs)
        if enc == 0:
            values = plain(data, p, ptype, present, leaf.type_length)
        elif enc in (2, 8):
            if dictionary is None:
                raise ValueError(f"{where}: a dictionary-encoded page without a dictionary page")
            ids = rle_hybrid(data, p + 1, len(data), data[p], present) if present else []
            values = [dictionary[i] for i in ids]
        elif enc == 3 and PHYSICAL.get(ptype) == "BOOLEAN":  # booleans as RLE runs of width 1, length-prefixed
            ln = int.from_bytes(data[p:p + 4], "little")
            values = [bool(x) for x in rle_hybrid(data, p + 4, p + 4 + ln, 1, present)]
        else:
            raise ValueError(f"{where}: {ENCODINGS.get(enc, enc)} encoding is not supported (PLAIN and dictionary are)")
        if leaf.is_text:
            values = [v.decode("utf-8") for v in values]
        it = iter(values)
        triples += [(r, d, next(it) if d == max_def else None) for r, d in zip(reps, defs)]
        seen += n
    return triples


def assemble(path, triples):
    """Dremel record assembly of one leaf column: one nested value per row, repeated nodes as lists, groups as
    {child name: value} holding just this leaf's branch (rows() merges the branches of all leaves)"""
    defs, reps, d_at, r_at = [], [], 0, 0
    for node in path:
        d_at += node.repetition != REQUIRED
        r_at += node.repetition == REPEATED
        defs.append(d_at)
        reps.append(r_at)
    last = len(path) - 1

    def element(i, d, v):  # the value of one instance of path[i]
        return v if i == last else {path[i + 1].name: make(i + 1, d, v)}

    def make(i, d, v):  # the value of path[i] at definition level d (a repeated node: the list so far)
        node = path[i]
        if node.repetition != REQUIRED and d < defs[i]:
            return [] if node.repetition == REPEATED else None
        return [element(i, d, v)] if node.repetition == REPEATED else element(i, d, v)

    rows = []
    for r, d, v in triples:
        if r == 0:
            rows.append({path[0].name: make(0, d, v)})
            continue
        k = reps.index(r)  # the repeated node that gets a new element
        cur = rows[-1]
        for j in range(k):
            cur = cur[path[j].name]
            if path[j].repetition == REPEATED:
                cur = cur[-1]
        cur[path[k].name].append(element(k, d, v))
    return rows


def merge(a, b):
    if isinstance(a, dict) and isinstance(b, dict):
        for k, v in b.items():
            a[k] = merge(a[k], v) if k in a else v
        return a
    if isinstance(a, list) and isinstance(b, list):
        return [merge(x, y) for x, y in zip(a, b)]
    return a if b is None else b


def finish(node, v, element=False):
    """Assembled values -> Python values: LIST-annotated groups become lists of their elements"""
    if node.repetition == REPEATED and not element:
        return [finish(node, x, True) for x in v]
    if v is None or not node.children:
        return v
    if node.is_list:
        rep = node.children[0]
        items = v[rep.name]
        if not rep.children or len(rep.children) > 1 or rep.name in ("array", node.name + "_tuple"):
            return [finish(rep, x, True) for x in items]  # legacy 2-level: the repeated field is the element
        inner = rep.children[0]
        return [finish(inner, x[inner.name]) for x in items]
    return {c.name: finish(c, v.get(c.name)) for c in node.children}


def read_parquet(src):
    """The rows of a Parquet file (a path or its bytes) as a list of dicts; ValueError naming what is wrong."""
    buf = Path(src).read_bytes() if isinstance(src, (str, Path)) else bytes(src)
    where = str(src) if isinstance(src, (str, Path)) else "parquet data"
    if len(buf) < 12 or buf[:4] != MAGIC or buf[-4:] != MAGIC:
        raise ValueError(f"{where}: not a Parquet file (no PAR1 magic at both ends: truncated or another format)")
    n = int.from_bytes(buf[-8:-4], "little")
    try:
        meta = Thrift(buf, len(buf) - 8 - n).struct()
        root = schema_tree(meta[2])
        paths = leaf_paths(root)
        out = []
        for rg in meta.get(4, []):
            cols = rg[1]
            if len(cols) != len(paths):
                raise ValueError(f"{where}: a row group has {len(cols)} columns, the schema {len(paths)}")
            rows = None
            for path, col in zip(paths, cols):
                if col[3].get(4, 0) not in (0, 1, 2):
                    raise ValueError(f"{where}: column {'.'.join(n.name for n in path)} uses "
                                     f"{CODECS.get(col[3][4], col[3][4])} compression, which is not supported "
                                     f"(SNAPPY, GZIP and none are)")
                got = assemble(path, read_column(buf, col[3], path, where))
                rows = got if rows is None else [merge(a, b) for a, b in zip(rows, got)]
            out += [{c.name: finish(c, r.get(c.name)) for c in root.children} for r in rows or []]
    except (IndexError, KeyError, struct.error, zlib.error, UnicodeDecodeError) as e:
        raise ValueError(f"{where}: damaged Parquet data ({type(e).__name__}: {e})") from None
    if len(out) != meta.get(3, len(out)):
        raise ValueError(f"{where}: {len(out)} rows read, the footer says {meta[3]}")
    return out
