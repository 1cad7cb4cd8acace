package format

import (
	"bytes"
	"cmp"
	"crypto/aes"
	"crypto/cipher"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	"rekey/schemas"
)

func init() {
	Register("aes-gcm", "AES-GCM cells as applications write them: configurable nonce size and position, tag position, prefix, encoding (raw, base64, hex), AAD template and key location (DEK table or a wrapped-key column); see docs/FORMAT.md", newAESGCM)
}

// Errors of the aes-gcm parser. They are permanent: the bytes do not change.
var (
	ErrCellEncoding = errors.New("cell is not in the configured encoding")
	ErrCellPrefix   = errors.New("cell does not start with the configured prefix")
	ErrCellShort    = errors.New("cell too short for the configured layout")
	ErrCellAuth     = errors.New("cell failed authentication (a wrong key, or a format option that does not match the data: layout, nonce_size, tag_size, encoding, aad; or a corrupt cell)")
)

type part int

const (
	pNonce part = iota
	pCT
	pTag
)

// AESGCM is the configured "aes-gcm" format.
type AESGCM struct {
	nonceSize, tagSize int
	layout             []part // the parts in the cell, in order (no tag when tagCol is set)
	tagCol             string // the column holding each cell's tag, when it is not in the cell
	tagField           int    // tagCol's index in needs
	prefix             []byte
	enc                encoding
	aad                template
	keys               KeyPlace
	keyCol             string
	keyEnc             encoding
	bindMode           string // none, dek_id, template
	bind               template
	bindCtx            []ctxEntry
	table              Table // an application's DEK table (keys: table); zero: rekey's own
	needs              []string
	desc               string
}

type ctxEntry struct {
	name string
	val  template
}

func newAESGCM(m map[string]string) (Format, error) {
	o := newOptions("aes-gcm", m)
	f := &AESGCM{}
	var err error
	bad := func(opt, format string, a ...any) error {
		return fmt.Errorf("format aes-gcm: option %s: %s", opt, fmt.Sprintf(format, a...))
	}
	switch v := o.get("nonce_size", "12"); v {
	case "12", "16":
		f.nonceSize, _ = strconv.Atoi(v)
	default:
		return nil, bad("nonce_size", "%q: use 12 (the GCM standard) or 16", v)
	}
	switch v := o.get("tag_size", "16"); v {
	case "12", "13", "14", "15", "16":
		f.tagSize, _ = strconv.Atoi(v)
	default:
		return nil, bad("tag_size", "%q: use 16 (the default) or 12 to 15", v)
	}
	f.tagCol = o.get("tag_column", "")
	defLayout := "nonce,ciphertext,tag"
	if f.tagCol != "" {
		defLayout = "nonce,ciphertext"
	}
	lay := o.get("layout", defLayout)
	toks := strings.Split(lay, ",")
	seen := map[part]bool{}
	switch {
	case f.tagCol == "" && len(toks) != 3:
		return nil, bad("layout", "%q: name nonce, ciphertext and tag once each, comma-separated, in the order they are stored (e.g. nonce,ciphertext,tag)", lay)
	case f.tagCol != "" && len(toks) != 2:
		return nil, bad("layout", "%q: with tag_column the cell holds the nonce and the ciphertext: name each once, comma-separated, in the order they are stored (e.g. nonce,ciphertext)", lay)
	}
	f.layout = make([]part, len(toks))
	for i, t := range toks {
		var p part
		switch strings.TrimSpace(t) {
		case "nonce", "iv":
			p = pNonce
		case "ciphertext", "ct":
			p = pCT
		case "tag":
			if f.tagCol != "" {
				return nil, bad("layout", "%q names tag, but tag_column %q holds the tag: leave tag out of the layout", lay, f.tagCol)
			}
			p = pTag
		default:
			return nil, bad("layout", "%q: %q is not nonce, ciphertext or tag", lay, t)
		}
		if seen[p] {
			return nil, bad("layout", "%q names %q twice", lay, t)
		}
		seen[p] = true
		f.layout[i] = p
	}
	prefix, prefixHex := o.get("prefix", ""), o.get("prefix_hex", "")
	switch {
	case prefix != "" && prefixHex != "":
		return nil, bad("prefix", "set prefix (text) or prefix_hex (bytes), not both")
	case prefixHex != "":
		if f.prefix, err = hex.DecodeString(prefixHex); err != nil || len(f.prefix) > 64 {
			return nil, bad("prefix_hex", "%q is not up to 64 hex-encoded bytes", prefixHex)
		}
	case len(prefix) > 64:
		return nil, bad("prefix", "longer than 64 bytes")
	default:
		f.prefix = []byte(prefix)
	}
	if f.enc, err = parseEncoding(o.get("encoding", "raw")); err != nil {
		return nil, bad("encoding", "%v", err)
	}
	if f.aad, err = parseTemplate("aad", o.get("aad", ""), &f.needs); err != nil {
		return nil, fmt.Errorf("format aes-gcm: option %w", err)
	}
	switch v := o.get("keys", "table"); v {
	case "table":
		f.keys = KeyTable
	case "column":
		f.keys = KeyColumn
	default:
		return nil, bad("keys", "%q: use table (a DEK table joined by the dek_id column) or column (a wrapped-key column in each row, named by key_column)", v)
	}
	f.keyCol = o.get("key_column", "")
	if f.keys == KeyColumn && f.keyCol == "" {
		return nil, bad("key_column", "missing: keys: column needs the name of the wrapped-key column")
	}
	if f.keys == KeyTable && f.keyCol != "" {
		return nil, bad("key_column", "set, but keys is table: add keys: column")
	}
	if f.keyEnc, err = parseEncoding(o.get("key_encoding", "raw")); err != nil {
		return nil, bad("key_encoding", "%v", err)
	}
	defBind := "dek_id"
	if f.keys == KeyColumn {
		defBind = "none"
	}
	switch v := o.get("binding", defBind); v {
	case "none", "dek_id":
		f.bindMode = v
	default:
		f.bindMode = "template"
		if f.bind, err = parseTemplate("binding", v, &f.needs); err != nil {
			return nil, fmt.Errorf("format aes-gcm: option %w", err)
		}
	}
	if f.keys == KeyTable && f.bindMode == "template" {
		return nil, bad("binding", "%q: a DEK table's wrapped keys are bound to their dek_id (binding: dek_id, the default) or to nothing (binding: none); templates apply to keys: column", o.m["binding"])
	}
	if f.keys == KeyColumn && f.bindMode == "dek_id" {
		return nil, bad("binding", "dek_id: with keys: column there is no DEK table; bind to a column's value with a template such as {key_id}")
	}
	if f.keys == KeyTable && (o.m["key_encoding"] != "" || o.m["binding_context"] != "") {
		return nil, bad("key_encoding", "key_encoding and binding_context apply to keys: column; for a DEK table in another layout use table_id_column, table_key_column and table_key_encoding")
	}
	tid, tkey, tenc := o.get("table_id_column", ""), o.get("table_key_column", ""), o.get("table_key_encoding", "")
	if f.keys == KeyColumn && tid+tkey+tenc != "" {
		return nil, bad("table_id_column", "table_id_column, table_key_column and table_key_encoding describe a DEK table (keys: table); with keys: column use key_column and key_encoding")
	}
	if f.keys == KeyTable && (tid+tkey+tenc != "" || f.bindMode == "none") {
		// An application's DEK table: an id column and a wrapped-key
		// column; the rows' KEK and mechanism are the job's.
		f.table = Table{IDColumn: cmp.Or(tid, "dek_id"), KeyColumn: cmp.Or(tkey, "wrapped"), KeyEncoding: cmp.Or(tenc, "raw"), Unbound: f.bindMode == "none"}
		if f.table.IDColumn == f.table.KeyColumn {
			return nil, bad("table_key_column", "%q is also table_id_column", tkey)
		}
		if _, err := parseEncoding(f.table.KeyEncoding); err != nil {
			return nil, bad("table_key_encoding", "%v", err)
		}
	}
	if v := o.get("binding_context", ""); v != "" {
		for _, kv := range strings.Split(v, ",") {
			name, val, ok := strings.Cut(kv, "=")
			if !ok || name == "" {
				return nil, bad("binding_context", "%q: want name={column},name2=text,... (a KMS encryption context)", v)
			}
			t, err := parseTemplate("binding_context", val, &f.needs)
			if err != nil {
				return nil, fmt.Errorf("format aes-gcm: option %w", err)
			}
			f.bindCtx = append(f.bindCtx, ctxEntry{name: strings.TrimSpace(name), val: t})
		}
	}
	if err := o.done(); err != nil {
		return nil, err
	}
	if f.tagCol != "" {
		if f.tagCol == f.keyCol {
			return nil, bad("tag_column", "%q is also key_column", f.tagCol)
		}
		f.tagField = slices.Index(f.needs, f.tagCol)
		if f.tagField < 0 {
			f.tagField = len(f.needs)
			f.needs = append(f.needs, f.tagCol)
		}
	}
	for _, n := range f.needs {
		if n == f.keyCol && f.keyCol != "" {
			return nil, bad("aad", "the AAD or binding cannot read the wrapped-key column %q", n)
		}
	}
	f.desc = fmt.Sprintf("aes-gcm nonce=%d tag=%d layout=%s prefix=%q encoding=%s aad=%q keys=%s", f.nonceSize, f.tagSize, lay, f.prefix, f.enc.name, f.aad.src, f.keys)
	if f.keys == KeyColumn {
		f.desc += fmt.Sprintf(" key_column=%s key_encoding=%s binding=%s", f.keyCol, f.keyEnc.name, f.bindMode)
	}
	if f.table.App() {
		f.desc += fmt.Sprintf(" table_id_column=%s table_key_column=%s table_key_encoding=%s binding=%s", f.table.IDColumn, f.table.KeyColumn, f.table.KeyEncoding, f.bindMode)
	}
	if f.tagCol != "" {
		f.desc += " tag_column=" + f.tagCol
	}
	return f, nil
}

func (f *AESGCM) Name() string      { return "aes-gcm" }
func (f *AESGCM) Keys() KeyPlace    { return f.keys }
func (f *AESGCM) Table() Table      { return f.table }
func (f *AESGCM) KeyColumn() string { return f.keyCol }
func (f *AESGCM) Needs() []string   { return f.needs }
func (f *AESGCM) Text() bool        { return f.enc.text }
func (f *AESGCM) KeyText() bool     { return f.keyEnc.text }
func (f *AESGCM) Describe() string  { return f.desc }
func (f *AESGCM) rawOverhead() int  { return len(f.prefix) + f.nonceSize + f.cellTag() }

// cellTag is the tag's length in the cell (0 when tag_column holds it).
func (f *AESGCM) cellTag() int {
	if f.tagCol != "" {
		return 0
	}
	return f.tagSize
}

// TagColumn is the column holding each cell's tag ("" when the tag is in
// the cell). Seal leaves the tag out of the cell (in Cell.Tag); its
// column value is TagValue(Cell.Tag).
func (f *AESGCM) TagColumn() string { return f.tagCol }

// TagFieldIndex is the index of TagColumn in Needs (Cell.Fields): Open
// reads the tag there.
func (f *AESGCM) TagFieldIndex() int { return f.tagField }

// TagValue is the tag column's value of a tag: in the cells' encoding.
func (f *AESGCM) TagValue(tag []byte) []byte { return f.enc.encode(nil, tag) }
func (f *AESGCM) Overhead() int              { return f.enc.encodedLen(f.rawOverhead()) }
func (f *AESGCM) CellLen(n int) int          { return f.enc.encodedLen(f.rawOverhead() + n) }
func (f *AESGCM) MaxPlaintext(n int) int {
	return max(f.enc.decodedLen(n)-f.rawOverhead(), 0)
}

// Cipher is AES-GCM (128, 192 or 256 by the secret's length) with the
// configured nonce and tag sizes.
func (f *AESGCM) Cipher(secret []byte) (cipher.AEAD, error) {
	switch len(secret) {
	case 16, 24, 32:
	default:
		return nil, fmt.Errorf("aes-gcm cells need an AES key of 16, 24 or 32 bytes; the unwrapped secret is %d bytes (is the wrapped key something else, e.g. a library's serialized key?)", len(secret))
	}
	b, err := aes.NewCipher(secret)
	if err != nil {
		return nil, err
	}
	switch {
	case f.nonceSize != 12:
		if f.tagSize != 16 {
			return nil, fmt.Errorf("aes-gcm: a %d-byte nonce takes the standard 16-byte tag", f.nonceSize)
		}
		return cipher.NewGCMWithNonceSize(b, f.nonceSize)
	case f.tagSize != 16:
		return cipher.NewGCMWithTagSize(b, f.tagSize)
	}
	return cipher.NewGCM(b)
}

func (f *AESGCM) aadOf(c *Cell) ([]byte, error) {
	if f.aad.empty() {
		return nil, nil
	}
	var err error
	c.AAD, err = f.aad.appendTo(c.AAD[:0], c)
	return c.AAD, err
}

// Open implements Format.
func (f *AESGCM) Open(dst []byte, aead cipher.AEAD, cell []byte, c *Cell) ([]byte, error) {
	if len(cell) > f.enc.encodedLen(schemas.MaxCellBytes+f.rawOverhead()) {
		return dst, fmt.Errorf("%w (%d bytes)", schemas.ErrCellTooLarge, len(cell))
	}
	raw, err := f.enc.decode(cell)
	if err != nil {
		return dst, err
	}
	if !bytes.HasPrefix(raw, f.prefix) {
		return dst, fmt.Errorf("%w %q", ErrCellPrefix, f.prefix)
	}
	raw = raw[len(f.prefix):]
	if len(raw) < f.nonceSize+f.cellTag() {
		return dst, fmt.Errorf("%w: %d bytes after the prefix, need at least %d (nonce %d + tag %d)", ErrCellShort, len(raw), f.nonceSize+f.cellTag(), f.nonceSize, f.cellTag())
	}
	ctLen := len(raw) - f.nonceSize - f.cellTag()
	var nonce, ct, tag []byte
	if f.tagCol != "" {
		if f.tagField >= len(c.Fields) {
			return dst, fmt.Errorf("aes-gcm: no value of tag_column %q for this cell", f.tagCol)
		}
		if c.Fields[f.tagField] == "" {
			return dst, fmt.Errorf("%w: tag_column %q is null or empty for this cell", ErrCellShort, f.tagCol)
		}
		if tag, err = f.enc.decode([]byte(c.Fields[f.tagField])); err != nil {
			return dst, fmt.Errorf("tag_column %q: %w", f.tagCol, err)
		}
		if len(tag) != f.tagSize {
			return dst, fmt.Errorf("%w: tag_column %q holds %d bytes, tag_size is %d", ErrCellShort, f.tagCol, len(tag), f.tagSize)
		}
	}
	off, ctStart := 0, 0
	for _, p := range f.layout {
		switch p {
		case pNonce:
			nonce, off = raw[off:off+f.nonceSize], off+f.nonceSize
		case pCT:
			ct, ctStart, off = raw[off:off+ctLen], off, off+ctLen
		case pTag:
			tag, off = raw[off:off+f.tagSize], off+f.tagSize
		}
	}
	var sealed []byte
	if f.tagCol == "" && f.adjacent() {
		sealed = raw[ctStart : ctStart+ctLen+f.tagSize]
	} else {
		sealed = append(append(make([]byte, 0, ctLen+f.tagSize), ct...), tag...)
	}
	aad, err := f.aadOf(c)
	if err != nil {
		return dst, err
	}
	out, err := aead.Open(dst, nonce, sealed, aad)
	if err != nil {
		return dst, ErrCellAuth
	}
	return out, nil
}

// adjacent reports whether the tag directly follows the ciphertext.
func (f *AESGCM) adjacent() bool {
	for i := 0; i+1 < len(f.layout); i++ {
		if f.layout[i] == pCT && f.layout[i+1] == pTag {
			return true
		}
	}
	return false
}

// Seal implements Format.
func (f *AESGCM) Seal(dst []byte, aead cipher.AEAD, rand io.Reader, pt []byte, c *Cell) ([]byte, error) {
	if len(pt) > schemas.MaxCellBytes {
		return dst, fmt.Errorf("%w (%d bytes)", schemas.ErrCellTooLarge, len(pt))
	}
	aad, err := f.aadOf(c)
	if err != nil {
		return dst, err
	}
	nonce := make([]byte, f.nonceSize)
	if _, err := io.ReadFull(rand, nonce); err != nil {
		return dst, fmt.Errorf("read nonce: %w", err)
	}
	sealed := aead.Seal(make([]byte, 0, len(pt)+f.tagSize), nonce, pt, aad)
	ct, tag := sealed[:len(pt)], sealed[len(pt):]
	c.Tag = tag
	raw := make([]byte, 0, f.rawOverhead()+len(pt))
	raw = append(raw, f.prefix...)
	for _, p := range f.layout {
		switch p {
		case pNonce:
			raw = append(raw, nonce...)
		case pCT:
			raw = append(raw, ct...)
		case pTag:
			raw = append(raw, tag...)
		}
	}
	return f.enc.encode(dst, raw), nil
}

// Binding implements Format.
func (f *AESGCM) Binding(c *Cell) (Binding, error) {
	var b Binding
	switch f.bindMode {
	case "dek_id":
		b.DEKID = c.DEKID
	case "template":
		v, err := f.bind.appendTo(nil, c)
		if err != nil {
			return b, err
		}
		b.DEKID = string(v)
	}
	if len(f.bindCtx) > 0 {
		b.Context = map[string]string{}
		for _, e := range f.bindCtx {
			v, err := e.val.appendTo(nil, c)
			if err != nil {
				return b, err
			}
			b.Context[e.name] = string(v)
		}
	}
	return b, nil
}

// DecodeKey implements Format: a wrapped-key column value to its blob.
func (f *AESGCM) DecodeKey(v []byte) ([]byte, error) {
	if len(v) > f.keyEnc.encodedLen(schemas.MaxWrappedDEK) {
		return nil, fmt.Errorf("wrapped key is %d bytes, over the %d-byte limit", len(v), schemas.MaxWrappedDEK)
	}
	b, err := f.keyEnc.decode(v)
	if err != nil {
		return nil, fmt.Errorf("wrapped key is not in the configured key_encoding %s", f.keyEnc.name)
	}
	if len(b) == 0 {
		return nil, fmt.Errorf("wrapped key is empty")
	}
	return bytes.Clone(b), nil
}

// EncodeKey implements Format.
func (f *AESGCM) EncodeKey(blob []byte) []byte { return f.keyEnc.encode(nil, blob) }

// ReplaceKey implements Format: the key column's new value.
func (f *AESGCM) ReplaceKey(_, blob []byte) ([]byte, error) {
	if f.keys != KeyColumn {
		return nil, fmt.Errorf("aes-gcm with keys: table has no wrapped key in its rows")
	}
	return f.EncodeKey(blob), nil
}

// encoding is how bytes are stored in a column.
type encoding struct {
	name string
	text bool
	b64  *base64.Encoding
	hex  bool
}

func parseEncoding(s string) (encoding, error) {
	switch s {
	case "raw":
		return encoding{name: s}, nil
	case "base64":
		return encoding{name: s, text: true, b64: base64.StdEncoding}, nil
	case "base64-raw":
		return encoding{name: s, text: true, b64: base64.RawStdEncoding}, nil
	case "base64url":
		return encoding{name: s, text: true, b64: base64.URLEncoding}, nil
	case "base64url-raw":
		return encoding{name: s, text: true, b64: base64.RawURLEncoding}, nil
	case "hex":
		return encoding{name: s, text: true, hex: true}, nil
	}
	return encoding{}, fmt.Errorf("%q: use raw, base64, base64-raw (no padding), base64url, base64url-raw or hex", s)
}

func (e encoding) decode(v []byte) ([]byte, error) {
	switch {
	case e.b64 != nil:
		out := make([]byte, e.b64.DecodedLen(len(v)))
		n, err := e.b64.Strict().Decode(out, v)
		if err != nil {
			return nil, fmt.Errorf("%w %s: %v", ErrCellEncoding, e.name, err)
		}
		return out[:n], nil
	case e.hex:
		out := make([]byte, hex.DecodedLen(len(v)))
		n, err := hex.Decode(out, v)
		if err != nil {
			return nil, fmt.Errorf("%w hex: %v", ErrCellEncoding, err)
		}
		return out[:n], nil
	}
	return v, nil
}

func (e encoding) encode(dst, raw []byte) []byte {
	switch {
	case e.b64 != nil:
		return e.b64.AppendEncode(dst, raw)
	case e.hex:
		return hex.AppendEncode(dst, raw)
	}
	return append(dst, raw...)
}

func (e encoding) encodedLen(n int) int {
	switch {
	case e.b64 != nil:
		return e.b64.EncodedLen(n)
	case e.hex:
		return 2 * n
	}
	return n
}

func (e encoding) decodedLen(n int) int {
	switch {
	case e.b64 != nil:
		return e.b64.DecodedLen(n)
	case e.hex:
		return n / 2
	}
	return n
}
