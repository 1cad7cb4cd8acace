// Package format is the registry of cell formats: how an encrypted column of
// a Parquet record file lays out its cells, what each cell is authenticated
// with, and where the wrapped key that opens it lives (a DEK table joined by
// a dek_id column, or a wrapped-key column in the same row). It is pure code
// without I/O: parsing never touches a key custodian, caps every length and
// has a fuzz target per format.
//
// Formats: "rekey-v1" (rekey's own envelope, schemas.SealCell) and
// "aes-gcm" (what applications write by hand: AES-GCM with a configurable
// layout, encoding, AAD and key location; see docs/FORMAT.md).
//
// Limits: cells are AES-GCM (rekey-v1, aes-gcm); a tag kept in its own
// column (aes-gcm tag_column) is read, never written; DEK tables are in
// rekey's layout.
package format

import (
	"crypto/cipher"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
)

// KeyPlace says where a row's wrapped DEK lives.
type KeyPlace int

const (
	// KeyTable: a DEK table, joined by the dek_id column (rekey's own).
	KeyTable KeyPlace = iota
	// KeyColumn: a wrapped-key column in the same row.
	KeyColumn
	// KeyCell: inside each cell, one wrapped DEK per cell (Tink's envelope).
	KeyCell
)

func (p KeyPlace) String() string {
	switch p {
	case KeyColumn:
		return "column"
	case KeyCell:
		return "cell"
	}
	return "table"
}

// Cell is what a format needs to know about one cell besides its bytes.
type Cell struct {
	Column   string   // the encrypted column's name
	RecordID string   // the record id, canonical (see transforms.recordID)
	DEKID    string   // the row's dek_id ("" where keys are in a column)
	Fields   []string // values of the columns Format.Needs names, in order
	AAD      []byte   // scratch the format may reuse for the AAD
	// Tag is set by Seal: the AEAD tag of the cell it just sealed (valid
	// until the next Seal with this Cell). The ledger's record checksum is
	// made of the tags (docs/FORMAT.md section 3).
	Tag []byte
	// Key is the wrapped DEK Seal writes into the cell (KeyCell formats).
	Key []byte
}

// Format is one cell format, configured.
type Format interface {
	// Name is the registered name ("rekey-v1").
	Name() string
	// Keys says where the wrapped DEKs live.
	Keys() KeyPlace
	// KeyColumn is the wrapped-key column (Keys() == KeyColumn).
	KeyColumn() string
	// Needs lists the other columns whose values the AAD or the binding
	// read, in the order Cell.Fields holds them.
	Needs() []string
	// Text reports whether cells are text (string columns).
	Text() bool
	// Cipher builds the cell AEAD from an unwrapped secret.
	Cipher(secret []byte) (cipher.AEAD, error)
	// Open authenticates and decrypts cell, appending the plaintext to dst.
	Open(dst []byte, aead cipher.AEAD, cell []byte, c *Cell) ([]byte, error)
	// Seal encrypts pt into a new cell appended to dst, with a fresh nonce
	// read from rand.
	Seal(dst []byte, aead cipher.AEAD, rand io.Reader, pt []byte, c *Cell) ([]byte, error)
	// Overhead is the most bytes a cell adds to its plaintext.
	Overhead() int
	// CellLen is the size of the cell of an n-byte plaintext.
	CellLen(n int) int
	// MaxPlaintext is the largest plaintext a cell of n bytes can hold.
	MaxPlaintext(n int) int
	// Binding is what the custodian bound the row's wrapped key to, from
	// the cell context (KeyColumn formats).
	Binding(c *Cell) (Binding, error)
	// DecodeKey and EncodeKey convert a wrapped-key column value to and
	// from the custodian's blob (KeyColumn formats).
	DecodeKey(v []byte) ([]byte, error)
	EncodeKey(blob []byte) []byte
	// KeyText reports whether the wrapped-key column is text.
	KeyText() bool
	// ReplaceKey is a key-carrying value (a key column's value, or a
	// KeyCell cell) with its wrapped key replaced by blob, everything else
	// byte for byte as it was. KeyTable formats refuse.
	ReplaceKey(v, blob []byte) ([]byte, error)
	// Describe is the configuration in one line, for plans and manifests.
	Describe() string
}

// SecretEncoder is a format whose DEKs are not bare AES keys (Tink's are
// serialized key protos): EncodeSecret makes the secret a new cell key is
// wrapped as, from fresh AES key bytes. Other formats wrap the key itself.
type SecretEncoder interface {
	EncodeSecret(aesKey []byte) ([]byte, error)
}

// Binding mirrors keys.Binding (schemas imports nothing of rekey's key
// layer): what a row's wrapped key is bound to.
type Binding struct {
	DEKID   string
	Context map[string]string
}

// Factory makes a configured format from its options (job file
// format_options); unknown options are errors.
type Factory func(opts map[string]string) (Format, error)

var (
	mu       sync.RWMutex
	registry = map[string]Factory{}
	docs     = map[string]string{}
)

// Register adds a format. It panics on a duplicate name.
func Register(name, doc string, f Factory) {
	mu.Lock()
	defer mu.Unlock()
	if _, dup := registry[name]; dup {
		panic(fmt.Sprintf("format: %q registered twice", name))
	}
	registry[name] = f
	docs[name] = doc
}

// Default is the format of a job that names none.
const Default = "rekey-v1"

// New configures format name with opts ("" is Default).
func New(name string, opts map[string]string) (Format, error) {
	if name == "" {
		name = Default
	}
	mu.RLock()
	f := registry[name]
	mu.RUnlock()
	if f == nil {
		return nil, fmt.Errorf("unknown format %q (formats: %s)", name, strings.Join(Names(), ", "))
	}
	return f(opts)
}

// Names lists the registered formats.
func Names() []string {
	mu.RLock()
	defer mu.RUnlock()
	var out []string
	for n := range registry {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// options reads a format's options, refusing the ones it does not know.
type options struct {
	format string
	m      map[string]string
	used   map[string]bool
}

func newOptions(format string, m map[string]string) *options {
	return &options{format: format, m: m, used: map[string]bool{}}
}

func (o *options) get(name, def string) string {
	o.used[name] = true
	if v, ok := o.m[name]; ok {
		return v
	}
	return def
}

func (o *options) done() error {
	var unknown []string
	for k := range o.m {
		if !o.used[k] {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		known := make([]string, 0, len(o.used))
		for k := range o.used {
			known = append(known, k)
		}
		sort.Strings(known)
		return fmt.Errorf("format %s: unknown option(s) %s (options: %s)", o.format, strings.Join(unknown, ", "), strings.Join(known, ", "))
	}
	return nil
}

// Table is how a format's DEK table is laid out. The zero value is rekey's
// own DEK table (dek_id, kek, wrap, wrapped, created, kcv; docs/FORMAT.md
// section 2). An application's table (App) needs only an id column and a
// wrapped-key column, in the encoding it chose; its rows' KEK and wrap
// mechanism are the job's, and a rewrap keeps every other column of it.
type Table struct {
	IDColumn, KeyColumn string
	KeyEncoding         string // raw, base64, base64-raw, base64url, base64url-raw or hex
	// Unbound: the wrapped keys are bound to nothing (binding: none), not
	// to their dek_id.
	Unbound bool
}

// App reports whether t is an application's table, not rekey's own.
func (t Table) App() bool { return t.IDColumn != "" }

// KeyText reports whether the wrapped-key column holds text.
func (t Table) KeyText() bool {
	e, _ := parseEncoding(t.keyEncoding())
	return e.text
}

func (t Table) keyEncoding() string {
	if t.KeyEncoding == "" {
		return "raw"
	}
	return t.KeyEncoding
}

// DecodeKey is the custodian's blob of a wrapped-key column value.
func (t Table) DecodeKey(v []byte) ([]byte, error) {
	e, err := parseEncoding(t.keyEncoding())
	if err != nil {
		return nil, err
	}
	b, err := e.decode(v)
	if err != nil {
		return nil, fmt.Errorf("wrapped key in column %q is not in the configured table_key_encoding %s", t.KeyColumn, e.name)
	}
	return b, nil
}

// EncodeKey is the wrapped-key column value of blob.
func (t Table) EncodeKey(blob []byte) []byte {
	e, _ := parseEncoding(t.keyEncoding())
	return e.encode(nil, blob)
}

// TableOf is the DEK table layout of f: an application's when f was
// configured with one, rekey's own otherwise.
func TableOf(f Format) Table {
	if t, ok := f.(interface{ Table() Table }); ok {
		return t.Table()
	}
	return Table{}
}
