package pipeline_test

// An independent reader of the aes-gcm cell format, written from
// docs/FORMAT.md sections 5 and 6 only (not from schemas/format or
// transforms). Everything prefixed "fg" is that reader: it parses the
// documented options, decodes and opens cells, renders templates, computes
// the binding AAD of a PKCS#11 aes-gcm wrap and the key names, dek_ids and
// DEK table file names of a reencrypt from keys in a column. The rekey-v1
// side reuses the decoder of formatdoc_test.go.

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/miekg/pkcs11"
	"github.com/parquet-go/parquet-go"

	"rekey/providers/keys"
	"rekey/schemas"
)

// ---------------------------------------------------------------------------
// Section 6: options

type fgOpts struct {
	NonceSize, TagSize int
	Layout             []string // "nonce", "ciphertext", "tag"
	Prefix             []byte
	Encoding           string
	AAD                string
	Keys               string
	KeyColumn          string
	KeyEncoding        string
	Binding            string
	BindingContext     string
}

func fgParseOpts(m map[string]string) (fgOpts, error) {
	o := fgOpts{NonceSize: 12, TagSize: 16, Layout: []string{"nonce", "ciphertext", "tag"}, Encoding: "raw",
		Keys: "table", KeyEncoding: "raw"}
	for k, v := range m {
		switch k {
		case "nonce_size":
			n, err := strconv.Atoi(v)
			if err != nil || (n != 12 && n != 16) {
				return o, fmt.Errorf("nonce_size %q: doc allows 12 or 16", v)
			}
			o.NonceSize = n
		case "tag_size":
			n, err := strconv.Atoi(v)
			if err != nil || n < 12 || n > 16 {
				return o, fmt.Errorf("tag_size %q: doc allows 12 to 16", v)
			}
			o.TagSize = n
		case "layout":
			parts := strings.Split(v, ",")
			seen := map[string]bool{}
			o.Layout = nil
			for _, p := range parts {
				p = strings.TrimSpace(p)
				switch p {
				case "iv":
					p = "nonce"
				case "ct":
					p = "ciphertext"
				}
				if (p != "nonce" && p != "ciphertext" && p != "tag") || seen[p] {
					return o, fmt.Errorf("layout %q", v)
				}
				seen[p] = true
				o.Layout = append(o.Layout, p)
			}
			if len(o.Layout) != 3 {
				return o, fmt.Errorf("layout %q: doc wants all three parts", v)
			}
		case "prefix":
			if _, hexToo := m["prefix_hex"]; hexToo {
				return o, errors.New("prefix and prefix_hex both set")
			}
			o.Prefix = []byte(v)
		case "prefix_hex":
			b, err := hex.DecodeString(v)
			if err != nil {
				return o, err
			}
			o.Prefix = b
		case "encoding":
			o.Encoding = v
		case "aad":
			o.AAD = v
		case "keys":
			o.Keys = v
		case "key_column":
			o.KeyColumn = v
		case "key_encoding":
			o.KeyEncoding = v
		case "binding":
			o.Binding = v
		case "binding_context":
			o.BindingContext = v
		default:
			return o, fmt.Errorf("option %q is not in the doc", k)
		}
	}
	if len(o.Prefix) > 64 {
		return o, errors.New("prefix over 64 bytes")
	}
	if o.NonceSize == 16 && o.TagSize != 16 {
		return o, errors.New("nonce_size 16 requires tag_size 16")
	}
	if o.Binding == "" {
		o.Binding = map[string]string{"table": "dek_id", "column": "none"}[o.Keys]
	}
	return o, nil
}

// ---------------------------------------------------------------------------
// Section 6: encodings (strict; CR and LF skipped when reading)

func fgEncoding(name string) (*base64.Encoding, bool, error) {
	switch name {
	case "raw":
		return nil, false, nil
	case "hex":
		return nil, true, nil
	case "base64":
		return base64.StdEncoding.Strict(), false, nil
	case "base64-raw":
		return base64.RawStdEncoding.Strict(), false, nil
	case "base64url":
		return base64.URLEncoding.Strict(), false, nil
	case "base64url-raw":
		return base64.RawURLEncoding.Strict(), false, nil
	}
	return nil, false, fmt.Errorf("encoding %q is not in the doc", name)
}

func fgDecode(name string, v []byte) ([]byte, error) {
	b64, isHex, err := fgEncoding(name)
	if err != nil {
		return nil, err
	}
	if b64 == nil && !isHex {
		return bytes.Clone(v), nil
	}
	s := strings.NewReplacer("\r", "", "\n", "").Replace(string(v))
	if isHex {
		return hex.DecodeString(s)
	}
	return b64.DecodeString(s)
}

func fgEncode(name string, b []byte) []byte {
	b64, isHex, err := fgEncoding(name)
	if err != nil {
		panic(err)
	}
	switch {
	case isHex:
		return []byte(hex.EncodeToString(b))
	case b64 != nil:
		return []byte(b64.EncodeToString(b))
	}
	return bytes.Clone(b)
}

// ---------------------------------------------------------------------------
// Section 6: templates

// fgRender renders a template. col gives a column's value rendered as a
// record id (section 2); column is the encrypted column's name ({$column}).
func fgRender(tmpl string, col func(name string) ([]byte, error), column string) ([]byte, error) {
	if len(tmpl) > 4096 {
		return nil, errors.New("template over 4096 bytes")
	}
	var out []byte
	for i := 0; i < len(tmpl); i++ {
		c := tmpl[i]
		switch {
		case c == '{' && i+1 < len(tmpl) && tmpl[i+1] == '{':
			out = append(out, '{')
			i++
		case c == '}' && i+1 < len(tmpl) && tmpl[i+1] == '}':
			out = append(out, '}')
			i++
		case c == '}':
			return nil, fmt.Errorf("lone } in %q", tmpl)
		case c == '{':
			end := strings.IndexByte(tmpl[i+1:], '}')
			if end < 0 {
				return nil, fmt.Errorf("unclosed { in %q", tmpl)
			}
			name := tmpl[i+1 : i+1+end]
			i += 1 + end
			switch {
			case name == "":
				return nil, fmt.Errorf("empty {} in %q", tmpl)
			case name == "$column":
				out = append(out, column...)
			case strings.HasPrefix(name, "$"):
				return nil, fmt.Errorf("{%s} in %q", name, tmpl)
			default:
				v, err := col(name)
				if err != nil {
					return nil, err
				}
				out = append(out, v...)
			}
		default:
			out = append(out, c)
		}
	}
	return out, nil
}

// fgRowCols renders a column of a Parquet row read by fdReadParquet.
func fgRowCols(tab *fdTable, row map[string]parquet.Value) func(string) ([]byte, error) {
	return func(name string) ([]byte, error) {
		leaf, ok := tab.schema.Lookup(name)
		if !ok {
			return nil, fmt.Errorf("no column %q", name)
		}
		v := row[name]
		if v.IsNull() {
			return nil, fmt.Errorf("column %q is null", name)
		}
		id, err := fdCanonicalID(leaf.Node.Type().Kind(), v)
		return []byte(id), err
	}
}

// ---------------------------------------------------------------------------
// Section 6: opening and sealing a cell

func fgAEAD(o fgOpts, key []byte) (cipher.AEAD, error) {
	if l := len(key); l != 16 && l != 24 && l != 32 {
		return nil, fmt.Errorf("aes-gcm DEK of %d bytes", l)
	}
	blk, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	if o.NonceSize != 12 {
		return cipher.NewGCMWithNonceSize(blk, o.NonceSize)
	}
	return cipher.NewGCMWithTagSize(blk, o.TagSize)
}

// fgOpen is "Opening a cell", steps 2 to 7 (the AAD is rendered by the
// caller, step 6).
func fgOpen(o fgOpts, key, stored, aad []byte) ([]byte, error) {
	b, err := fgDecode(o.Encoding, stored)
	if err != nil {
		return nil, fmt.Errorf("decode %s: %w", o.Encoding, err)
	}
	if !bytes.HasPrefix(b, o.Prefix) {
		return nil, errors.New("prefix missing")
	}
	b = b[len(o.Prefix):]
	if len(b) < o.NonceSize+o.TagSize {
		return nil, errors.New("cell shorter than nonce and tag")
	}
	size := map[string]int{"nonce": o.NonceSize, "tag": o.TagSize, "ciphertext": len(b) - o.NonceSize - o.TagSize}
	part := map[string][]byte{}
	for _, p := range o.Layout {
		part[p], b = b[:size[p]], b[size[p]:]
	}
	g, err := fgAEAD(o, key)
	if err != nil {
		return nil, err
	}
	ct := append(bytes.Clone(part["ciphertext"]), part["tag"]...)
	pt, err := g.Open(nil, part["nonce"], ct, aad)
	if err != nil {
		return nil, errors.New("cell failed authentication")
	}
	if pt == nil {
		pt = []byte{}
	}
	return pt, nil
}

// fgSeal is the same backwards (the test's own application).
func fgSeal(o fgOpts, key, pt, aad []byte) []byte {
	g, err := fgAEAD(o, key)
	if err != nil {
		panic(err)
	}
	nonce := make([]byte, o.NonceSize)
	_, _ = rand.Read(nonce)
	sealed := g.Seal(nil, nonce, pt, aad)
	part := map[string][]byte{"nonce": nonce, "ciphertext": sealed[:len(pt)], "tag": sealed[len(pt):]}
	b := bytes.Clone(o.Prefix)
	for _, p := range o.Layout {
		b = append(b, part[p]...)
	}
	return fgEncode(o.Encoding, b)
}

// ---------------------------------------------------------------------------
// Section 5: bindings; section 6: key names, dek_ids, DEK table files

type fgBinding struct {
	DEKID   string
	Context map[string]string
	AAD     []string
}

func (b fgBinding) zero() bool { return b.DEKID == "" && len(b.Context) == 0 && len(b.AAD) == 0 }

func (b fgBinding) keys() keys.Binding {
	return keys.Binding{DEKID: b.DEKID, Context: b.Context, AAD: b.AAD}
}

// fgBinding of a row for keys: column, from the options binding and
// binding_context.
func fgRowBinding(o fgOpts, col func(string) ([]byte, error)) (fgBinding, error) {
	var b fgBinding
	switch o.Binding {
	case "none", "dek_id":
	default:
		v, err := fgRender(o.Binding, col, "")
		if err != nil {
			return b, err
		}
		b.DEKID = string(v)
	}
	if o.BindingContext != "" {
		b.Context = map[string]string{}
		for _, e := range strings.Split(o.BindingContext, ",") {
			name, tmpl, ok := strings.Cut(e, "=")
			if !ok {
				return b, fmt.Errorf("binding_context entry %q", e)
			}
			v, err := fgRender(tmpl, col, "")
			if err != nil {
				return b, err
			}
			b.Context[strings.TrimSpace(name)] = string(v)
		}
	}
	return b, nil
}

func fgSortedNames(m map[string]string) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// fgBindingText is the "binding text" of section 6.
func fgBindingText(b fgBinding) string {
	switch {
	case b.zero():
		return "unbound"
	case len(b.Context) == 0 && len(b.AAD) == 0:
		return "dek_id " + strconv.Quote(b.DEKID)
	}
	var parts []string
	if b.DEKID != "" {
		parts = append(parts, "dek_id="+strconv.Quote(b.DEKID))
	}
	for _, k := range fgSortedNames(b.Context) {
		parts = append(parts, k+"="+strconv.Quote(b.Context[k]))
	}
	for _, a := range b.AAD {
		parts = append(parts, "aad="+strconv.Quote(a))
	}
	return strings.Join(parts, " ")
}

func fgKeyText(b fgBinding, blob []byte) []byte {
	return append(append([]byte(fgBindingText(b)), 0), blob...)
}

func fgKeyName(b fgBinding, blob []byte) string {
	s := sha256.Sum256(fgKeyText(b, blob))
	return "wrapped:" + hex.EncodeToString(s[:8])
}

func fgNewDEKID(runID, rel string, b fgBinding, blob []byte) string {
	s := sha256.Sum256(append(append([]byte(rel), 0), fgKeyText(b, blob)...))
	return runID + "-" + hex.EncodeToString(s[:12])
}

// fgUnit flattens rel as section 6 says (section 3's rule, .parquet dropped).
func fgUnit(rel string) string {
	flat := []byte(strings.TrimSuffix(rel, ".parquet"))
	for i, c := range flat {
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			flat[i] = '_'
		}
	}
	if len(flat) > 80 {
		flat = flat[len(flat)-80:]
	}
	s := sha256.Sum256([]byte(rel))
	return string(flat) + "-" + hex.EncodeToString(s[:])[:12]
}

// fgWrapAAD is the AAD of a PKCS#11 aes-gcm wrap for a binding (section 5).
func fgWrapAAD(b fgBinding) []byte {
	switch {
	case b.zero():
		return nil
	case len(b.Context) == 0 && len(b.AAD) == 0:
		return append([]byte("rekey.dek.v1\x00"), b.DEKID...)
	}
	out := []byte("rekey.bind.v1\x00")
	str := func(s string) {
		out = binary.BigEndian.AppendUint32(out, uint32(len(s)))
		out = append(out, s...)
	}
	str(b.DEKID)
	out = binary.BigEndian.AppendUint32(out, uint32(len(b.Context)))
	for _, k := range fgSortedNames(b.Context) {
		str(k)
		str(b.Context[k])
	}
	out = binary.BigEndian.AppendUint32(out, uint32(len(b.AAD)))
	for _, a := range b.AAD {
		str(a)
	}
	return out
}

// fgUnwrapGCM unwraps a PKCS#11 aes-gcm blob (nonce 12 ‖ ct ‖ tag 16) with
// its own PKCS#11 session and the documented AAD.
func (h *fdHSM) fgUnwrapGCM(token, object string, blob, aad []byte) ([]byte, error) {
	if len(blob) < 12+16+16 || len(blob) > 12+64+16 {
		return nil, fmt.Errorf("aes-gcm blob of %d bytes, doc says 44 to 92", len(blob))
	}
	s, err := h.session(token)
	if err != nil {
		return nil, err
	}
	kek, err := h.find(s, pkcs11.CKO_SECRET_KEY, object)
	if err != nil {
		return nil, err
	}
	params := pkcs11.NewGCMParams(blob[:12], aad, 128)
	defer params.Free()
	if err := h.ctx.DecryptInit(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}, kek); err != nil {
		return nil, fmt.Errorf("C_DecryptInit(AES_GCM): %w", err)
	}
	return h.ctx.Decrypt(s, blob[12:])
}

// ---------------------------------------------------------------------------
// An application's dataset, sealed with fgSeal

type fgApp struct {
	dir    string
	opts   map[string]string
	o      fgOpts
	keys   [][]byte         // the raw DEKs
	keyOf  map[int64]int    // record -> index in keys
	plain  map[int64]string // record -> plaintext
	files  int
	marker string
}

// fgWriteApp writes files record files of n records each (ids 1..), sealed
// under nKeys random DEKs of keyLen bytes, each DEK wrapped by the source KEK
// once per distinct binding of the rows that use it, stored in wrapped_key.
func fgWriteApp(t *testing.T, opts map[string]string, keyLen, files, n, nKeys int, marker string) *fgApp {
	t.Helper()
	o, err := fgParseOpts(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	kek, err := keys.Open(ctx, env.KEK("source", "kek-aes"), keys.Options{})
	if err != nil {
		t.Fatal(err)
	}
	a := &fgApp{dir: filepath.Join(t.TempDir(), "app"), opts: opts, o: o, keyOf: map[int64]int{}, plain: map[int64]string{},
		files: files, marker: marker}
	for i := 0; i < nKeys; i++ {
		k := make([]byte, keyLen)
		_, _ = rand.Read(k)
		a.keys = append(a.keys, k)
	}
	if err := os.MkdirAll(a.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	id := int64(0)
	for f := 0; f < files; f++ {
		wrapped := map[string]string{} // (key, binding text) -> blob, per file
		var rows []appRow
		for i := 0; i < n; i++ {
			id++
			r := appRow{ID: id, Tenant: fmt.Sprintf("tenant-%d", id%3)}
			col := func(name string) ([]byte, error) {
				switch name {
				case "id":
					return []byte(strconv.FormatInt(r.ID, 10)), nil
				case "tenant":
					return []byte(r.Tenant), nil
				}
				return nil, fmt.Errorf("no column %q", name)
			}
			ki := int(id) % nKeys
			b, err := fgRowBinding(o, col)
			if err != nil {
				t.Fatal(err)
			}
			wk := fmt.Sprint(ki, "|", fgBindingText(b))
			if _, ok := wrapped[wk]; !ok {
				d, _ := keys.NewDEK(bytes.Clone(a.keys[ki]))
				w, err := kek.Wrap(ctx, b.keys(), d)
				if err != nil {
					t.Fatal(err)
				}
				wrapped[wk] = string(fgEncode(o.KeyEncoding, w))
			}
			r.WrappedKey = wrapped[wk]
			pt := fmt.Sprintf("%suser%d@example.com %s", marker, id, strings.Repeat("x", int(id%5)))
			aad, err := fgRender(o.AAD, col, "email")
			if err != nil {
				t.Fatal(err)
			}
			r.Email = string(fgSeal(o, a.keys[ki], []byte(pt), aad))
			a.keyOf[id], a.plain[id] = ki, pt
			rows = append(rows, r)
		}
		if err := parquet.WriteFile(filepath.Join(a.dir, fmt.Sprintf("part-%d.parquet", f)), rows); err != nil {
			t.Fatal(err)
		}
	}
	return a
}

// fgRowKey is one row's wrapped key as the doc reads it.
type fgRowKey struct {
	stored  []byte // the column value as stored (encoded)
	blob    []byte // decoded
	binding fgBinding
}

func fgKeyOfRow(t *testing.T, o fgOpts, tab *fdTable, row map[string]parquet.Value) fgRowKey {
	t.Helper()
	v := row[o.KeyColumn]
	if v.IsNull() {
		t.Fatal("null wrapped key")
	}
	stored := bytes.Clone(v.ByteArray())
	blob, err := fgDecode(o.KeyEncoding, stored)
	if err != nil || len(blob) == 0 || len(blob) > 4096 {
		t.Fatalf("wrapped key %q does not decode as %s: %v", stored, o.KeyEncoding, err)
	}
	b, err := fgRowBinding(o, fgRowCols(tab, row))
	if err != nil {
		t.Fatal(err)
	}
	return fgRowKey{stored: stored, blob: blob, binding: b}
}

func fgColumnNames(tab *fdTable) []string {
	var out []string
	for _, f := range tab.schema.Fields() {
		out = append(out, f.Name())
	}
	return out
}

// ---------------------------------------------------------------------------
// Tests

// fgCases are the two datasets: an unbound one (the zero binding) and one
// whose wrapped keys are bound to a template and a context.
var fgCases = []struct {
	name   string
	keyLen int
	opts   map[string]string
}{
	{"unbound", 32, map[string]string{"prefix": "v1:", "encoding": "base64url-raw", "layout": "tag, iv ,ct", "tag_size": "12",
		"aad": "t={tenant}/{id}/{$column}{{x}}", "keys": "column", "key_column": "wrapped_key", "key_encoding": "hex"}},
	{"bound", 24, map[string]string{"prefix_hex": "01", "encoding": "base64", "layout": "ciphertext,nonce,tag", "nonce_size": "16",
		"keys": "column", "key_column": "wrapped_key", "key_encoding": "base64url", "binding": "tenant {tenant}",
		"binding_context": "app=crm, tenant={tenant}"}},
}

// TestFormatDocAESGCMKeyColumn migrates aes-gcm datasets with keys in a
// column (rewrap, and reencrypt to rekey-v1) and reads every result with
// the doc-only decoders.
func TestFormatDocAESGCMKeyColumn(t *testing.T) {
	for _, tc := range fgCases {
		t.Run(tc.name, func(t *testing.T) {
			const files, n = 2, 30
			app := fgWriteApp(t, tc.opts, tc.keyLen, files, n, 3, "")
			ds := &appDataset{dir: app.dir, keyOpts: app.opts}
			t.Run("rewrap", func(t *testing.T) {
				j := foreignJob(t, schemas.ModeRewrap, "fg-rw-"+tc.name, ds, env.KEK("target", "kek-aes"))
				m := runJob(t, j)
				if m.Status != "succeeded" || m.Totals.RecordsMigrated != files*n {
					t.Fatalf("manifest %+v", m)
				}
				fgCheckRewrap(t, app, j.Source.Data, j.Target.Data, j.Ledger, j.RunID)
			})
			t.Run("reencrypt-to-rekey-v1", func(t *testing.T) {
				j := foreignJob(t, schemas.ModeReencrypt, "fg-re-"+tc.name, ds, env.KEK("target", "kek-aes"))
				m := runJob(t, j)
				if m.Status != "succeeded" || m.Totals.RecordsMigrated != files*n {
					t.Fatalf("manifest %+v", m)
				}
				fgCheckReencrypt(t, app, j.Source.Data, j.Target.Data, j.Target.DEKs, j.Ledger, j.RunID)
			})
		})
	}
}

// fgCheckRewrap: only the key column changed; each new wrapped key unwraps
// with the target KEK under the row's binding (through keys and through our
// own PKCS#11 with the documented AAD) to the original DEK, and the
// untouched cells open with it; the ledger rows are as documented.
func fgCheckRewrap(t *testing.T, app *fgApp, srcDir, dstDir, ledger, runID string) {
	t.Helper()
	ctx := context.Background()
	o := app.o
	kek, err := keys.Open(ctx, env.KEK("target", "kek-aes"), keys.Options{})
	if err != nil {
		t.Fatal(err)
	}
	h := fdOpenHSM(t)
	src, dst := fdFiles(t, srcDir), fdFiles(t, dstDir)
	if len(src) != len(dst) || len(dst) != app.files {
		t.Fatalf("%d source files, %d target files", len(src), len(dst))
	}
	type want struct {
		srcName, newName, checksum string
		n                          int64
		alts                       map[string]string // other readings, to name a mismatch
	}
	ledgerWant := map[string]want{}
	opened := 0
	for i := range src {
		relS, _ := filepath.Rel(srcDir, src[i])
		relD, _ := filepath.Rel(dstDir, dst[i])
		if relS != relD {
			t.Fatalf("target file %s for source %s", relD, relS)
		}
		st, dt := fdReadParquet(t, src[i]), fdReadParquet(t, dst[i])
		if a, b := fgColumnNames(st), fgColumnNames(dt); fmt.Sprint(a) != fmt.Sprint(b) {
			t.Fatalf("%s: columns %v became %v", relD, a, b)
		}
		dt.fdCheckCol(t, relD, o.KeyColumn, parquet.ByteArray, "STRING", "")
		dt.fdCheckCol(t, relD, "email", parquet.ByteArray, "STRING", "")
		if len(st.rows) != len(dt.rows) {
			t.Fatalf("%s: %d rows became %d", relD, len(st.rows), len(dt.rows))
		}
		for k, row := range dt.rows {
			srow := st.rows[k]
			for name, v := range row {
				if name != o.KeyColumn && (v.Kind() != srow[name].Kind() || v.String() != srow[name].String()) {
					t.Fatalf("%s row %d: column %s changed in a rewrap", relD, k, name)
				}
			}
			id := row["id"].Int64()
			sk, dk := fgKeyOfRow(t, o, st, srow), fgKeyOfRow(t, o, dt, row)
			if bytes.Equal(sk.blob, dk.blob) {
				t.Fatalf("record %d: wrapped key not rewrapped", id)
			}
			// Section 5: PKCS#11 aes-gcm blob = nonce 12 ‖ secret ‖ tag 16.
			if len(dk.blob) != 12+len(app.keys[0])+16 {
				t.Fatalf("record %d: new blob is %d bytes, doc says 12+%d+16", id, len(dk.blob), len(app.keys[0]))
			}
			dek, err := kek.Unwrap(ctx, dk.binding.keys(), kek.Mechanism(), dk.blob)
			if err != nil {
				t.Fatalf("record %d: new wrapped key does not unwrap with the target KEK, binding %s: %v", id, fgBindingText(dk.binding), err)
			}
			raw, err := h.fgUnwrapGCM("target", "kek-aes", dk.blob, fgWrapAAD(dk.binding))
			if err != nil {
				t.Fatalf("record %d: the new blob does not open with the AAD of section 5 (%x): %v", id, fgWrapAAD(dk.binding), err)
			}
			if !bytes.Equal(raw, dek.Bytes()) || !bytes.Equal(raw, app.keys[app.keyOf[id]]) {
				t.Fatalf("record %d: the rewrapped key is not the original DEK", id)
			}
			dek.Zero()
			aad, err := fgRender(o.AAD, fgRowCols(dt, row), "email")
			if err != nil {
				t.Fatal(err)
			}
			pt, err := fgOpen(o, raw, row["email"].ByteArray(), aad)
			if err != nil || string(pt) != app.plain[id] {
				t.Fatalf("record %d: the doc decoder opens %q (%v), want %q", id, pt, err, app.plain[id])
			}
			clear(raw)
			opened++
			sum := sha256.Sum256(dk.stored)
			blobSum := sha256.Sum256(dk.blob)
			ledgerWant[strconv.FormatInt(id, 10)] = want{fgKeyName(sk.binding, sk.blob), fgKeyName(dk.binding, dk.blob), hex.EncodeToString(sum[:]), int64(len(dk.stored)),
				map[string]string{
					"SHA-256 of the new column value as written": "wrapped:" + hex.EncodeToString(sum[:8]),
					"the key name of the new key, unbound":       fgKeyName(fgBinding{}, dk.blob),
					"SHA-256 of the decoded new blob":            "wrapped:" + hex.EncodeToString(blobSum[:8]),
				}}
		}
	}
	rows := fdReadLedger(t, ledger, runID)
	recs, bad := 0, 0
	for _, r := range rows {
		if r.Unit != "record" {
			t.Fatalf("rewrap of a key column: ledger row of unit %q (doc: one row per record)", r.Unit)
		}
		w, ok := ledgerWant[r.RecordID]
		if !ok || r.Status != "migrated" {
			t.Fatalf("ledger row %+v", r)
		}
		if r.DEKID != w.srcName {
			t.Fatalf("record %s: ledger dek_id %q, doc's key name %q", r.RecordID, r.DEKID, w.srcName)
		}
		if r.Checksum != w.checksum || r.Bytes != w.n {
			t.Fatalf("record %s: ledger checksum/bytes %q/%d, doc says %q/%d", r.RecordID, r.Checksum, r.Bytes, w.checksum, w.n)
		}
		if r.NewDEKID != w.newName {
			if bad++; bad == 1 {
				t.Errorf("FORMAT.md section 6 (rewrap ledger new_dek_id = the key name of the new wrapped key: binding text ‖ 0x00 ‖ decoded new blob): record %s has %q, the doc gives %q; observed is %s",
					r.RecordID, r.NewDEKID, w.newName, fgWhich(r.NewDEKID, w.alts))
			}
		}
		recs++
	}
	if bad > 0 {
		t.Errorf("%d of %d rewrap ledger rows have a new_dek_id other than the doc's", bad, recs)
	}
	if recs != len(ledgerWant) || opened != len(app.plain) {
		t.Fatalf("%d ledger rows, %d records opened, %d written", recs, opened, len(app.plain))
	}
	t.Logf("rewrap: %d cells opened by the doc decoder with keys unwrapped under the documented binding", opened)
}

// fgCheckReencrypt: DEK table files and dek_ids follow the documented
// formulas; the target is rekey-v1 and the rekey-v1 doc decoder reads it.
func fgCheckReencrypt(t *testing.T, app *fgApp, srcDir, dstDir, deksDir, ledger, runID string) {
	t.Helper()
	o := app.o
	// The doc's rel ("source.data removed from the front": /part-0.parquet)
	// and, to name a mismatch, the path relative to source.data
	// (part-0.parquet).
	type naming struct {
		files map[string]map[string]bool // DEK table file -> dek_ids
		dek   map[string]string          // record id -> new dek_id
	}
	doc, alt := naming{map[string]map[string]bool{}, map[string]string{}}, naming{map[string]map[string]bool{}, map[string]string{}}
	wantName := map[string]string{} // record id -> source key name
	for _, f := range fdFiles(t, srcDir) {
		relDoc, _ := filepath.Rel(srcDir, f) // doc: relative to source.data, no leading /
		relAlt := strings.TrimPrefix(f, srcDir)
		tab := fdReadParquet(t, f)
		for _, nm := range []struct {
			n   naming
			rel string
		}{{doc, relDoc}, {alt, relAlt}} {
			file := "data-" + fgUnit(nm.rel) + ".parquet"
			nm.n.files[file] = map[string]bool{}
			for _, row := range tab.rows {
				k := fgKeyOfRow(t, o, tab, row)
				id := strconv.FormatInt(row["id"].Int64(), 10)
				nd := fgNewDEKID(runID, nm.rel, k.binding, k.blob)
				nm.n.files[file][nd] = true
				nm.n.dek[id] = nd
				wantName[id] = fgKeyName(k.binding, k.blob)
			}
		}
	}
	ents, err := os.ReadDir(deksDir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	names := func(m map[string]map[string]bool) string {
		var out []string
		for f := range m {
			out = append(out, f)
		}
		sort.Strings(out)
		return fmt.Sprint(out)
	}
	sort.Strings(got)
	use := doc
	if fmt.Sprint(got) != names(doc.files) {
		if fmt.Sprint(got) != names(alt.files) {
			t.Fatalf("DEK table files %v; the doc gives %v", got, names(doc.files))
		}
		t.Errorf("FORMAT.md section 6 (rel = the path relative to source.data without a leading /, e.g. part-0.parquet; DEK table file data-<unit>.parquet): DEK table files are %v, the doc gives %v; observed is the rule applied to /part-0.parquet",
			got, names(doc.files))
		use = alt
	}
	for f, ids := range use.files {
		tab := fdReadParquet(t, filepath.Join(deksDir, f))
		have := map[string]bool{}
		for _, r := range tab.rows {
			have[fdStr(r["dek_id"])] = true
		}
		if fmt.Sprint(have) != fmt.Sprint(ids) {
			t.Fatalf("%s: dek_ids %v, the doc's formula gives %v", f, have, ids)
		}
	}
	table := fdReadDEKTable(t, deksDir)
	h := fdOpenHSM(t)
	dst := fdDecrypt(t, h, dstDir, table, []string{"email"})
	recs, bad := 0, 0
	for _, f := range dst {
		tab := fdReadParquet(t, filepath.Join(dstDir, f.Rel))
		if cols := fgColumnNames(tab); fmt.Sprint(cols) != "[id tenant email dek_id]" {
			t.Fatalf("%s: columns %v, doc: the key column replaced by dek_id at the same position", f.Rel, cols)
		}
		tab.fdCheckCol(t, f.Rel, "dek_id", parquet.ByteArray, "STRING", "")
		if lt := tab.leaf(t, "email").Node.Type().LogicalType(); lt != nil && lt.String() != "" {
			t.Fatalf("%s: email is %v; doc: text to binary makes it BYTE_ARRAY without annotation", f.Rel, lt)
		}
		for _, r := range f.Records {
			id, _ := strconv.ParseInt(r.ID, 10, 64)
			if string(r.Plain["email"]) != app.plain[id] {
				t.Fatalf("record %s: plaintext %q, want %q", r.ID, r.Plain["email"], app.plain[id])
			}
			if r.DEKID != doc.dek[r.ID] {
				if bad++; bad == 1 {
					t.Errorf("FORMAT.md line 497 (new dek_id = run_id-hex(SHA-256(rel ‖ 0x00 ‖ key text))[:12], rel = part-N.parquet): record %s has %q, the doc gives %q; observed is %s",
						r.ID, r.DEKID, doc.dek[r.ID], fgWhich(r.DEKID, map[string]string{"the formula with rel = path relative to source.data (no leading /)": alt.dek[r.ID]}))
				}
				if r.DEKID != use.dek[r.ID] {
					t.Fatalf("record %s: dek_id %q matches no reading of the doc", r.ID, r.DEKID)
				}
			}
			recs++
		}
	}
	if recs != len(app.plain) {
		t.Fatalf("%d records decrypted, %d written", recs, len(app.plain))
	}
	keyNames := map[string]bool{}
	for _, n := range wantName {
		keyNames[n] = true
	}
	dekRows := 0
	for _, r := range fdReadLedger(t, ledger, runID) {
		if r.Status != "migrated" {
			t.Fatalf("ledger row %+v", r)
		}
		if r.Unit == "dek" {
			// Section 6: one dek row per DEK kept.
			dekRows++
			nd, ok := table[r.NewDEKID]
			if !ok || !keyNames[r.DEKID] {
				t.Fatalf("ledger dek row %q -> %q: not a source key name and a target dek_id", r.DEKID, r.NewDEKID)
			}
			if sum := sha256.Sum256(nd.Wrapped); r.Checksum != hex.EncodeToString(sum[:]) || r.Bytes != int64(len(nd.Wrapped)) {
				t.Fatalf("ledger dek row %q: checksum/bytes %s/%d, wrapped key %x/%d", r.NewDEKID, r.Checksum, r.Bytes, sum, len(nd.Wrapped))
			}
			continue
		}
		if r.Unit != "record" {
			t.Fatalf("reencrypt from a key column: ledger row %+v", r)
		}
		if r.DEKID != wantName[r.RecordID] || r.NewDEKID != use.dek[r.RecordID] {
			t.Fatalf("record %s: ledger %q -> %q, doc says %q -> %q", r.RecordID, r.DEKID, r.NewDEKID, wantName[r.RecordID], use.dek[r.RecordID])
		}
	}
	if dekRows != len(table) {
		t.Errorf("%d dek ledger rows for %d DEKs kept (section 6: one per DEK)", dekRows, len(table))
	}
	t.Logf("reencrypt: %d records read by the rekey-v1 doc decoder; DEK table files %v", recs, got)
}

// fgWhich names the alternative reading that gives got.
func fgWhich(got string, alts map[string]string) string {
	for name, v := range alts {
		if v == got {
			return name
		}
	}
	return fmt.Sprintf("none of %v", alts)
}

// TestFormatDocAESGCMWorkedExamples opens the worked examples of section 6
// with the doc decoder and checks the other numbers the doc prints.
func TestFormatDocAESGCMWorkedExamples(t *testing.T) {
	hx := func(s string) []byte {
		b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	t.Run("base64-prefix-aad", func(t *testing.T) {
		o, err := fgParseOpts(map[string]string{"prefix": "v1:", "encoding": "base64", "aad": "orders/{id}/{$column}"})
		if err != nil {
			t.Fatal(err)
		}
		cell := []byte("djE6oKGio6Slpqeoqaqrh3QVTiCLZ8cDCPe/YlSjsR3ZOlIiAxjfRIfCoh3VY/6o")
		if len(cell) != 64 {
			t.Errorf("doc line 432: a 64-character string; it has %d", len(cell))
		}
		dec, err := fgDecode("base64", cell)
		if err != nil {
			t.Fatal(err)
		}
		if want := hx("76313aa0a1a2a3a4a5a6a7a8a9aaab8774154e208b67c70308f7bf6254a3b11dd93a52220318df4487c2a21dd563fea8"); !bytes.Equal(dec, want) {
			t.Errorf("doc line 440: decoded %x, doc says %x", dec, want)
		}
		if string(dec[:3]) != "v1:" || len(dec)-3 != 45 || len(dec)-3-12-16 != 17 {
			t.Errorf("doc lines 441-442: prefix %q, %d bytes remain", dec[:3], len(dec)-3)
		}
		if !bytes.Equal(dec[3:15], hx("a0a1a2a3a4a5a6a7a8a9aaab")) || !bytes.Equal(dec[15:32], hx("8774154e208b67c70308f7bf6254a3b11d")) ||
			!bytes.Equal(dec[32:], hx("d93a52220318df4487c2a21dd563fea8")) {
			t.Errorf("doc lines 443-444: nonce %x ciphertext %x tag %x", dec[3:15], dec[15:32], dec[32:])
		}
		col := func(id int64) func(string) ([]byte, error) {
			return func(name string) ([]byte, error) {
				if name != "id" {
					return nil, fmt.Errorf("no column %q", name)
				}
				return []byte(strconv.FormatInt(id, 10)), nil
			}
		}
		aad, err := fgRender(o.AAD, col(42), "email")
		if err != nil || string(aad) != "orders/42/email" || hex.EncodeToString(aad) != "6f72646572732f34322f656d61696c" {
			t.Errorf("doc line 445: AAD %q %x (%v)", aad, aad, err)
		}
		key := hx("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
		pt, err := fgOpen(o, key, cell, aad)
		if err != nil || string(pt) != "alice@example.com" {
			t.Fatalf("doc line 447: opens to %q (%v)", pt, err)
		}
		aad43, _ := fgRender(o.AAD, col(42+1), "email")
		aadCol, _ := fgRender(o.AAD, col(42), "phone")
		for _, a := range [][]byte{aad43, aadCol} {
			if _, err := fgOpen(o, key, cell, a); err == nil {
				t.Errorf("doc line 448: opens with AAD %q", a)
			}
		}
	})
	t.Run("hex-ciphertext-tag-nonce", func(t *testing.T) {
		o, err := fgParseOpts(map[string]string{"layout": "ciphertext,tag,nonce", "encoding": "hex"})
		if err != nil {
			t.Fatal(err)
		}
		cell := []byte("07a59c7e16eaf63494250278dbb5fa4cee6f000000000000000000000001")
		dec, _ := fgDecode("hex", cell)
		if len(dec) != 30 || !bytes.Equal(dec[:2], hx("07a5")) || !bytes.Equal(dec[2:18], hx("9c7e16eaf63494250278dbb5fa4cee6f")) ||
			!bytes.Equal(dec[18:], hx("000000000000000000000001")) {
			t.Errorf("doc lines 453-454: %d bytes %x", len(dec), dec)
		}
		pt, err := fgOpen(o, hx("00112233445566778899aabbccddeeff"), cell, nil)
		if err != nil || string(pt) != "hi" {
			t.Fatalf("doc line 455: opens to %q (%v)", pt, err)
		}
		// Hex is read in either case.
		if pt, err := fgOpen(o, hx("00112233445566778899aabbccddeeff"), bytes.ToUpper(cell), nil); err != nil || string(pt) != "hi" {
			t.Fatalf("upper-case hex: %q (%v)", pt, err)
		}
	})
	t.Run("key-names", func(t *testing.T) {
		blob := make([]byte, 60)
		for i := range blob {
			blob[i] = byte(i)
		}
		if got := fgKeyName(fgBinding{}, blob); got != "wrapped:019cf6f61ec3ea9d" {
			t.Errorf("doc line 507: key name %s by the formula of lines 464-465, doc says wrapped:019cf6f61ec3ea9d", got)
		}
		if got := fgNewDEKID("re-2026", "part-0.parquet", fgBinding{}, blob); got != "re-2026-a29ac06c7f5414404b1682af" {
			t.Errorf("doc line 508: new dek_id %s by the formula of line 497, doc says re-2026-a29ac06c7f5414404b1682af", got)
		}
		if got := "data-" + fgUnit("part-0.parquet") + ".parquet"; got != "data-part-0-7f7df20909e2.parquet" {
			t.Errorf("doc line 508: DEK table file %s by the rule of lines 503-505, doc says data-part-0-7f7df20909e2.parquet", got)
		}
	})
	t.Run("binding-aad", func(t *testing.T) {
		if got := hex.EncodeToString(fgWrapAAD(fgBinding{DEKID: "tenant-42"})); got != "72656b65792e64656b2e76310074656e616e742d3432" {
			t.Errorf("section 5: AAD for tenant-42 %s", got)
		}
		ex := []struct {
			b    fgBinding
			n    int
			want string
		}{
			{fgBinding{Context: map[string]string{"tenant": "t1", "app": "crm"}}, 56,
				"72656b65792e62696e642e7631 00 00000000 00000002 00000003 617070 00000003 63726d 00000006 74656e616e74 00000002 7431 00000000"},
			{fgBinding{DEKID: "k1", AAD: []string{"a", "bc"}}, 39,
				"72656b65792e62696e642e7631 00 00000002 6b31 00000000 00000002 00000001 61 00000002 6263"},
		}
		for _, e := range ex {
			got := fgWrapAAD(e.b)
			if !bytes.Equal(got, hx(e.want)) || len(got) != e.n {
				t.Errorf("section 5 example: layout of lines 135-140 gives %x (%d bytes), doc prints %s (%d bytes)", got, len(got), e.want, e.n)
			}
		}
		// rekey's PKCS#11 wrap under each binding opens with those bytes.
		ctx := context.Background()
		kek, err := keys.Open(ctx, env.KEK("source", "kek-aes"), keys.Options{})
		if err != nil {
			t.Fatal(err)
		}
		h := fdOpenHSM(t)
		for _, b := range []fgBinding{{}, {DEKID: "tenant-42"}, ex[0].b, ex[1].b, {DEKID: "x", Context: map[string]string{"b": "2", "a": "1"}}} {
			for _, n := range []int{16, 24, 32, 64} {
				secret := make([]byte, n)
				_, _ = rand.Read(secret)
				d, _ := keys.NewDEK(bytes.Clone(secret))
				w, err := kek.Wrap(ctx, b.keys(), d)
				if err != nil {
					t.Fatal(err)
				}
				if len(w) != 12+n+16 {
					t.Errorf("section 5: aes-gcm blob of a %d-byte secret is %d bytes, doc says %d", n, len(w), 12+n+16)
				}
				got, err := h.fgUnwrapGCM("source", "kek-aes", w, fgWrapAAD(b))
				if err != nil || !bytes.Equal(got, secret) {
					t.Errorf("section 5: wrap under binding %s does not open with AAD %x: %v", fgBindingText(b), fgWrapAAD(b), err)
				}
			}
		}
	})
}
