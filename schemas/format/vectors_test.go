package format_test

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"os"
	"testing"

	"rekey/schemas/format"
)

// formatVector is an entry of testdata/vectors/formats.json (written by
// testdata/vectors/gen.go).
type formatVector struct {
	Name     string            `json:"name"`
	Format   string            `json:"format"`
	Options  map[string]string `json:"options"`
	Key      string            `json:"key"`
	Nonce    string            `json:"nonce"`
	Column   string            `json:"column"`
	RecordID string            `json:"record_id"`
	DEKID    string            `json:"dek_id"`
	Row      map[string]string `json:"row"`
	Plain    string            `json:"plaintext"`
	Cell     string            `json:"cell"`
	CellText string            `json:"cell_text"`
	// WrappedKey is the wrapped DEK a KeyCell format carries in its cells.
	WrappedKey string `json:"wrapped_key"`
}

// TestFormatVectors pins the bytes of every cell format: each vector's cell
// opens to its plaintext, sealing the plaintext again with the same nonce
// gives the same cell, and any one changed byte fails. A failure here means
// the format's bytes changed: that is a format change (docs/FORMAT.md,
// Versioning), not a test to regenerate.
func TestFormatVectors(t *testing.T) {
	b, err := os.ReadFile("../../testdata/vectors/formats.json")
	if err != nil {
		t.Fatal(err)
	}
	var vs []formatVector
	if err := json.Unmarshal(b, &vs); err != nil {
		t.Fatal(err)
	}
	covered := map[string]int{}
	for _, v := range vs {
		t.Run(v.Name, func(t *testing.T) {
			covered[v.Format]++
			f, err := format.New(v.Format, v.Options)
			if err != nil {
				t.Fatal(err)
			}
			key, nonce, plain, want := unhex(t, v.Key), unhex(t, v.Nonce), unhex(t, v.Plain), unhex(t, v.Cell)
			if v.CellText != "" && (!f.Text() || v.CellText != string(want)) {
				t.Fatalf("cell_text %q does not match the cell (text format: %v)", v.CellText, f.Text())
			}
			aead, err := f.Cipher(key)
			if err != nil {
				t.Fatal(err)
			}
			cell := func() *format.Cell {
				c := &format.Cell{Column: v.Column, RecordID: v.RecordID, DEKID: v.DEKID, Key: unhex(t, v.WrappedKey)}
				for _, n := range f.Needs() {
					val, ok := v.Row[n]
					if !ok {
						t.Fatalf("the format needs column %q; the vector's row has %v", n, v.Row)
					}
					c.Fields = append(c.Fields, val)
				}
				return c
			}

			got, err := f.Open(nil, aead, want, cell())
			if err != nil || !bytes.Equal(got, plain) {
				t.Fatalf("Open = %x, %v; want %x", got, err, plain)
			}
			nr := bytes.NewReader(nonce)
			sealed, err := f.Seal(nil, aead, nr, plain, cell())
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(sealed, want) {
				t.Fatalf("Seal with the vector's nonce:\n got %x\nwant %x", sealed, want)
			}
			if nr.Len() != 0 {
				t.Errorf("Seal left %d of the %d nonce bytes unread", nr.Len(), len(nonce))
			}
			if n := f.CellLen(len(plain)); n != len(want) && (f.Keys() != format.KeyCell || n < len(want)) {
				t.Errorf("CellLen(%d) = %d, the cell is %d bytes", len(plain), n, len(want))
			}
			if n := f.MaxPlaintext(len(want)); n < len(plain) {
				t.Errorf("MaxPlaintext(%d) = %d, below the plaintext's %d bytes", len(want), n, len(plain))
			}

			// Every one-byte change fails: XOR 1 changes a hex digit's or a
			// base64 character's value or makes it invalid, never just its case.
			for i := range want {
				bad := bytes.Clone(want)
				bad[i] ^= 1
				if f.Keys() == format.KeyCell {
					// A changed wrapped DEK is the custodian's to refuse
					// (it authenticates its own output); the payload's
					// AEAD covers the rest.
					if k, err := f.DecodeKey(bad); err == nil && !bytes.Equal(k, unhex(t, v.WrappedKey)) {
						continue
					}
				}
				if pt, err := f.Open(nil, aead, bad, cell()); err == nil {
					t.Fatalf("cell with byte %d changed opened to %x", i, pt)
				}
			}
			for _, bad := range [][]byte{want[:len(want)-1], append(bytes.Clone(want), want[0])} {
				if _, err := f.Open(nil, aead, bad, cell()); err == nil {
					t.Fatalf("cell of %d bytes (vector %d) opened", len(bad), len(want))
				}
			}
			// And so does another context.
			other := cell()
			other.Column += "x"
			other.RecordID += "x"
			other.DEKID += "x"
			for i := range other.Fields {
				other.Fields[i] += "x"
			}
			if _, err := f.Open(nil, aead, want, other); err == nil && (f.Name() == "rekey-v1" || len(f.Needs()) > 0) {
				t.Fatal("cell opened under another column, record and dek_id")
			}
		})
	}
	for _, name := range format.Names() {
		if covered[name] == 0 {
			t.Errorf("format %q has no vectors: add it to testdata/vectors/gen.go and run it", name)
		}
	}
	if len(vs) < 20 {
		t.Errorf("only %d vectors", len(vs))
	}
}

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatalf("vector field %q: %v", s, err)
	}
	return b
}
