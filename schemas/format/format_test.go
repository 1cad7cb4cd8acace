package format_test

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"strings"
	"testing"

	"rekey/schemas"
	"rekey/schemas/format"
)

var key32 = bytes.Repeat([]byte{7}, 32)

func mustNew(t testing.TB, name string, opts map[string]string) format.Format {
	t.Helper()
	f, err := format.New(name, opts)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestRekeyV1IsTheEnvelope(t *testing.T) {
	f := mustNew(t, "", nil)
	aead, err := f.Cipher(key32)
	if err != nil {
		t.Fatal(err)
	}
	c := &format.Cell{Column: "payload", RecordID: "7", DEKID: "d1"}
	cell, err := f.Seal(nil, aead, rand.Reader, []byte("hello"), c)
	if err != nil {
		t.Fatal(err)
	}
	aad, _ := schemas.CellAAD(nil, "payload", "7", "d1")
	pt, err := schemas.OpenCell(nil, aead, cell, aad)
	if err != nil || string(pt) != "hello" {
		t.Fatalf("rekey-v1 cell does not open as a v1 envelope: %q %v", pt, err)
	}
	if _, err := f.Open(nil, aead, cell, &format.Cell{Column: "payload", RecordID: "8", DEKID: "d1"}); err == nil {
		t.Fatal("a cell moved to another record opened")
	}
}

func TestAESGCMLayouts(t *testing.T) {
	block, _ := aes.NewCipher(key32)
	std, _ := cipher.NewGCM(block)
	for _, tc := range []struct {
		opts map[string]string
		// build makes the cell the way an application would.
		build func(nonce, sealed []byte) []byte
	}{
		{nil, func(n, s []byte) []byte { return append(append([]byte{}, n...), s...) }},
		{map[string]string{"layout": "ciphertext,tag,nonce", "encoding": "hex"}, func(n, s []byte) []byte {
			return []byte(hexs(append(append([]byte{}, s...), n...)))
		}},
		{map[string]string{"encoding": "base64", "aad": "{id}"}, func(n, s []byte) []byte {
			return []byte(base64.StdEncoding.EncodeToString(append(append([]byte{}, n...), s...)))
		}},
		{map[string]string{"prefix": "v1:", "encoding": "raw", "layout": "nonce,tag,ciphertext"}, func(n, s []byte) []byte {
			ct, tag := s[:len(s)-16], s[len(s)-16:]
			return append(append(append([]byte("v1:"), n...), tag...), ct...)
		}},
	} {
		f := mustNew(t, "aes-gcm", tc.opts)
		aead, err := f.Cipher(key32)
		if err != nil {
			t.Fatal(err)
		}
		c := &format.Cell{Column: "payload", RecordID: "42", Fields: []string{"42"}}
		var aad []byte
		if tc.opts["aad"] != "" {
			aad = []byte("42")
		}
		nonce := bytes.Repeat([]byte{1}, 12)
		app := tc.build(nonce, std.Seal(nil, nonce, []byte("secret"), aad))
		pt, err := f.Open(nil, aead, app, c)
		if err != nil || string(pt) != "secret" {
			t.Fatalf("%s: app cell: %q %v", f.Describe(), pt, err)
		}
		mine, err := f.Seal(nil, aead, rand.Reader, []byte("other"), c)
		if err != nil {
			t.Fatal(err)
		}
		pt, err = f.Open(nil, aead, mine, c)
		if err != nil || string(pt) != "other" {
			t.Fatalf("%s: round trip: %q %v", f.Describe(), pt, err)
		}
	}
}

func hexs(b []byte) string {
	const d = "0123456789abcdef"
	var s strings.Builder
	for _, c := range b {
		s.WriteByte(d[c>>4])
		s.WriteByte(d[c&15])
	}
	return s.String()
}

func TestAESGCMBadInput(t *testing.T) {
	f := mustNew(t, "aes-gcm", map[string]string{"encoding": "base64", "prefix": "v1:"})
	aead, _ := f.Cipher(key32)
	c := &format.Cell{}
	for name, tc := range map[string]struct {
		cell []byte
		want error
	}{
		"not base64":      {[]byte("%%%"), format.ErrCellEncoding},
		"wrong prefix":    {[]byte(base64.StdEncoding.EncodeToString([]byte("v2:" + strings.Repeat("x", 40)))), format.ErrCellPrefix},
		"truncated nonce": {[]byte(base64.StdEncoding.EncodeToString([]byte("v1:abc"))), format.ErrCellShort},
		"garbage":         {[]byte(base64.StdEncoding.EncodeToString([]byte("v1:" + strings.Repeat("x", 40)))), format.ErrCellAuth},
	} {
		if _, err := f.Open(nil, aead, tc.cell, c); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", name, err, tc.want)
		}
	}
	for _, opts := range []map[string]string{
		{"nonce_size": "8"}, {"layout": "nonce,tag"}, {"encoding": "rot13"}, {"keys": "column"},
		{"aad": "{unclosed"}, {"no_such_option": "1"}, {"keys": "table", "binding": "{tenant}"},
		{"keys": "table", "table_key_encoding": "rot13"}, {"keys": "table", "table_id_column": "k", "table_key_column": "k"},
		{"keys": "column", "key_column": "wk", "table_key_column": "x"}, {"keys": "table", "key_encoding": "base64"},
	} {
		if _, err := format.New("aes-gcm", opts); err == nil {
			t.Errorf("options %v accepted", opts)
		}
	}
	if _, err := format.New("tink", nil); err == nil || !strings.Contains(err.Error(), "aes-gcm") {
		t.Errorf("unknown format error does not list the formats: %v", err)
	}
	if _, err := f.Cipher(make([]byte, 34)); err == nil {
		t.Error("a 34-byte secret was taken as an AES key")
	}
}

func TestTemplates(t *testing.T) {
	f := mustNew(t, "aes-gcm", map[string]string{"keys": "column", "key_column": "wk", "aad": "{tenant}|{$column}|{id}{{x}}", "binding_context": "tenant={tenant},app=crm"})
	if got := f.Needs(); len(got) != 2 || got[0] != "tenant" || got[1] != "id" {
		t.Fatalf("needs %v", got)
	}
	aead, _ := f.Cipher(key32)
	c := &format.Cell{Column: "email", Fields: []string{"acme", "9"}}
	cell, err := f.Seal(nil, aead, rand.Reader, []byte("x"), c)
	if err != nil {
		t.Fatal(err)
	}
	if string(c.AAD) != "acme|email|9{x}" {
		t.Fatalf("aad %q", c.AAD)
	}
	if _, err := f.Open(nil, aead, cell, &format.Cell{Column: "email", Fields: []string{"acme", "10"}}); err == nil {
		t.Fatal("cell opened under another record's AAD")
	}
	b, err := f.Binding(c)
	if err != nil || b.DEKID != "" || b.Context["tenant"] != "acme" || b.Context["app"] != "crm" {
		t.Fatalf("binding %+v %v", b, err)
	}
}

func FuzzAESGCMOpen(f *testing.F) {
	f.Add([]byte("v1:0123456789abcdef0123456789abcdef"), uint8(0))
	f.Add([]byte("AAAA"), uint8(1))
	configs := []map[string]string{
		{"prefix": "v1:"},
		{"encoding": "base64", "layout": "ciphertext,tag,nonce"},
		{"encoding": "hex", "nonce_size": "16", "layout": "tag,nonce,ciphertext"},
		{"encoding": "base64url-raw", "tag_size": "12", "aad": "{a}"},
		{"encoding": "hex", "tag_column": "t"}, // the tag from the row's field (here "v": not hex)
	}
	fmts := make([]format.Format, len(configs))
	for i, c := range configs {
		fmts[i] = mustNew(f, "aes-gcm", c)
	}
	f.Fuzz(func(t *testing.T, cell []byte, which uint8) {
		fm := fmts[int(which)%len(fmts)]
		aead, err := fm.Cipher(key32)
		if err != nil {
			t.Fatal(err)
		}
		c := &format.Cell{Fields: []string{"v"}}
		if _, err := fm.Open(nil, aead, cell, c); err == nil {
			t.Fatalf("random cell authenticated: %q", cell)
		}
		if tc, ok := fm.(interface{ TagColumn() string }); ok && tc.TagColumn() != "" {
			return // read only
		}
		sealed, err := fm.Seal(nil, aead, rand.Reader, cell, c)
		if err != nil {
			t.Fatal(err)
		}
		pt, err := fm.Open(nil, aead, sealed, c)
		if err != nil || !bytes.Equal(pt, cell) {
			t.Fatalf("round trip: %v", err)
		}
	})
}

// TestAESGCMTagColumn (issue 11: the tag in its own column): an
// application stores nonce‖ciphertext in the cell and the tag, in the same
// encoding, in another column. rekey opens such cells (the tag comes from
// the row's fields), refuses a tag of the wrong length or encoding and a
// tampered one, and writes them: the cell without its tag, the tag for its
// column.
func TestAESGCMTagColumn(t *testing.T) {
	block, _ := aes.NewCipher(key32)
	std, _ := cipher.NewGCM(block)
	f := mustNew(t, "aes-gcm", map[string]string{"tag_column": "email_tag", "encoding": "base64", "aad": "{id}"})
	if got := f.Needs(); len(got) != 2 || got[0] != "id" || got[1] != "email_tag" {
		t.Fatalf("needs %v, want [id email_tag]", got)
	}
	aead, err := f.Cipher(key32)
	if err != nil {
		t.Fatal(err)
	}
	nonce := bytes.Repeat([]byte{7}, 12)
	sealed := std.Seal(nil, nonce, []byte("secret"), []byte("42"))
	ct, tag := sealed[:len(sealed)-16], sealed[len(sealed)-16:]
	cell := []byte(base64.StdEncoding.EncodeToString(append(append([]byte{}, nonce...), ct...)))
	c := &format.Cell{Column: "email", RecordID: "42", Fields: []string{"42", base64.StdEncoding.EncodeToString(tag)}}
	if pt, err := f.Open(nil, aead, cell, c); err != nil || string(pt) != "secret" {
		t.Fatalf("open with the tag from its column: %q %v", pt, err)
	}
	bad := append([]byte{}, tag...)
	bad[0] ^= 1
	for what, field := range map[string]string{
		"tampered tag": base64.StdEncoding.EncodeToString(bad),
		"short tag":    base64.StdEncoding.EncodeToString(tag[:8]),
		"not base64":   "!!",
	} {
		c := &format.Cell{Column: "email", RecordID: "42", Fields: []string{"42", field}}
		if _, err := f.Open(nil, aead, cell, c); err == nil {
			t.Errorf("%s: opened", what)
		} else if what != "tampered tag" && !strings.Contains(err.Error(), "email_tag") {
			t.Errorf("%s: the error does not name the tag column: %v", what, err)
		}
	}
	// Seal leaves the tag out of the cell; its column value is TagValue.
	sc := &format.Cell{Column: "email", RecordID: "42", Fields: []string{"42", ""}}
	out, err := f.Seal(nil, aead, rand.Reader, []byte("secret"), sc)
	if err != nil {
		t.Fatal(err)
	}
	tc := f.(interface{ TagValue([]byte) []byte }).TagValue(sc.Tag)
	raw, _ := base64.StdEncoding.DecodeString(string(out))
	if len(raw) != 12+len("secret") || len(sc.Tag) != 16 || string(tc) != base64.StdEncoding.EncodeToString(sc.Tag) {
		t.Fatalf("seal: cell of %d bytes, tag %d bytes, column value %q", len(raw), len(sc.Tag), tc)
	}
	if got, err := std.Open(nil, raw[:12], append(raw[12:], sc.Tag...), []byte("42")); err != nil || string(got) != "secret" {
		t.Fatalf("the sealed cell with its tag does not open as standard GCM: %v", err)
	}
	sc.Fields[f.(interface{ TagFieldIndex() int }).TagFieldIndex()] = string(tc)
	if pt, err := f.Open(nil, aead, out, sc); err != nil || string(pt) != "secret" {
		t.Fatalf("open what Seal wrote, its tag in the row: %q %v", pt, err)
	}
	for _, opts := range []map[string]string{
		{"tag_column": "t", "layout": "nonce,ciphertext,tag"},
		{"tag_column": "t", "layout": "nonce"},
		{"tag_column": "k", "keys": "column", "key_column": "k"},
	} {
		if _, err := format.New("aes-gcm", opts); err == nil {
			t.Errorf("options %v: accepted", opts)
		}
	}
}

// TestAppTable: a DEK table in an application's layout (issue 11): the
// table_* options and binding: none make one, with the defaults for what
// is not set; without them the table is rekey's own.
func TestAppTable(t *testing.T) {
	if tb := format.TableOf(mustNew(t, "aes-gcm", nil)); tb.App() {
		t.Fatalf("default aes-gcm has an application table: %+v", tb)
	}
	if tb := format.TableOf(mustNew(t, "rekey-v1", nil)); tb.App() {
		t.Fatalf("rekey-v1 has an application table: %+v", tb)
	}
	for _, tc := range []struct {
		opts map[string]string
		want format.Table
	}{
		{map[string]string{"binding": "none"}, format.Table{IDColumn: "dek_id", KeyColumn: "wrapped", KeyEncoding: "raw", Unbound: true}},
		{map[string]string{"table_id_column": "key_id", "table_key_column": "encrypted_key", "table_key_encoding": "base64"},
			format.Table{IDColumn: "key_id", KeyColumn: "encrypted_key", KeyEncoding: "base64"}},
	} {
		f := mustNew(t, "aes-gcm", tc.opts)
		tb := format.TableOf(f)
		if tb != tc.want || !tb.App() {
			t.Errorf("%v: table %+v, want %+v", tc.opts, tb, tc.want)
		}
		if !strings.Contains(f.Describe(), "table_key_column="+tc.want.KeyColumn) {
			t.Errorf("%v: Describe does not show the table: %s", tc.opts, f.Describe())
		}
	}
	tb := format.Table{IDColumn: "k", KeyColumn: "w", KeyEncoding: "base64"}
	blob := []byte{0, 1, 2, 0xff}
	v := tb.EncodeKey(blob)
	if string(v) != "AAEC/w==" || !tb.KeyText() {
		t.Fatalf("EncodeKey %q", v)
	}
	if got, err := tb.DecodeKey(v); err != nil || !bytes.Equal(got, blob) {
		t.Fatalf("DecodeKey %x %v", got, err)
	}
	if _, err := tb.DecodeKey([]byte("%%")); err == nil || !strings.Contains(err.Error(), `column "w"`) || !strings.Contains(err.Error(), "table_key_encoding base64") {
		t.Fatalf("DecodeKey of garbage: %v", err)
	}
}
