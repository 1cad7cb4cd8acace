package pipeline_test

// An independent reader of rekey's tink-envelope cells, written from
// docs/FORMAT.md section 6 ("### `tink-envelope`") only, not from
// schemas/format or transforms and without Tink. Everything prefixed "ft"
// is that reader: it parses the documented options, splits a cell into
// output prefix, enc_dek and payload, unwraps enc_dek with its own PKCS#11
// session (fgUnwrapGCM, empty associated data), parses the serialized
// AesGcmKey by the doc's byte layout and opens the payload with
// crypto/aes. Tink itself writes the source (tink_test.go's
// writeTinkDataset); rekey writes the targets.

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/parquet-go/parquet-go"
	"github.com/tink-crypto/tink-go/v2/aead"

	"rekey/schemas"
)

// ---------------------------------------------------------------------------
// Options (the table of the tink-envelope subsection)

type ftOpts struct {
	Prefix   string // raw, tink, legacy
	KeyID    uint32
	AnyID    bool
	KeySize  int // dek_template: the size of DEKs a reencrypt writes
	Encoding string
	AAD      string
}

func ftParseOpts(m map[string]string) (ftOpts, error) {
	o := ftOpts{Prefix: "raw", AnyID: true, KeySize: 32, Encoding: "raw"}
	for k, v := range m {
		switch k {
		case "prefix":
			if v != "raw" && v != "tink" && v != "legacy" {
				return o, fmt.Errorf("prefix %q: doc allows raw, tink, legacy", v)
			}
			o.Prefix = v
		case "key_id":
			n, err := strconv.ParseUint(v, 10, 32)
			if err != nil {
				return o, fmt.Errorf("key_id %q: %v", v, err)
			}
			o.KeyID, o.AnyID = uint32(n), false
		case "dek_template":
			switch v {
			case "AES256_GCM":
				o.KeySize = 32
			case "AES128_GCM":
				o.KeySize = 16
			default:
				return o, fmt.Errorf("dek_template %q: doc allows AES256_GCM or AES128_GCM", v)
			}
		case "encoding":
			if _, _, err := fgEncoding(v); err != nil {
				return o, err
			}
			o.Encoding = v
		case "aad":
			o.AAD = v
		default:
			return o, fmt.Errorf("option %q is not in the doc", k)
		}
	}
	return o, nil
}

func ftMustOpts(t *testing.T, m map[string]string) ftOpts {
	t.Helper()
	o, err := ftParseOpts(m)
	if err != nil {
		t.Fatal(err)
	}
	return o
}

// ---------------------------------------------------------------------------
// The cell

const (
	ftLenSize    = 4
	ftMaxEncDEK  = 4096
	ftPrefixSize = 5
	ftIVSize     = 12
	ftTagSize    = 16
)

// ftCell is one cell split as the doc's grammar says:
// cell = [prefix] ‖ uint32_be(len(enc_dek)) ‖ enc_dek ‖ payload.
type ftCell struct {
	Raw     []byte // the cell after decoding (encoding option)
	Prefix  []byte // 0 or 5 bytes
	KeyID   uint32 // of the prefix
	EncDEK  []byte
	Payload []byte // iv(12) ‖ ct ‖ tag(16)
}

func ftSplit(o ftOpts, stored []byte) (ftCell, error) {
	var c ftCell
	raw, err := fgDecode(o.Encoding, stored)
	if err != nil {
		return c, fmt.Errorf("decode %s: %w", o.Encoding, err)
	}
	c.Raw = raw
	if o.Prefix != "raw" {
		want := map[string]byte{"tink": 0x01, "legacy": 0x00}[o.Prefix]
		if len(raw) < ftPrefixSize {
			return c, errors.New("shorter than the output prefix")
		}
		if raw[0] != want {
			return c, fmt.Errorf("prefix byte 0x%02x, doc says 0x%02x for %s", raw[0], want, o.Prefix)
		}
		c.KeyID = binary.BigEndian.Uint32(raw[1:ftPrefixSize])
		if !o.AnyID && c.KeyID != o.KeyID {
			return c, fmt.Errorf("prefix key id %d, the options name %d", c.KeyID, o.KeyID)
		}
		c.Prefix, raw = raw[:ftPrefixSize], raw[ftPrefixSize:]
	}
	if len(raw) < ftLenSize {
		return c, errors.New("no room for uint32_be(len(enc_dek))")
	}
	n := binary.BigEndian.Uint32(raw)
	raw = raw[ftLenSize:]
	if n < 1 || n > ftMaxEncDEK || int(n) > len(raw) {
		return c, fmt.Errorf("len(enc_dek) %d: doc says 1 to 4096 and within the %d bytes left", n, len(raw))
	}
	c.EncDEK, c.Payload = raw[:n], raw[n:]
	if len(c.Payload) < ftIVSize+ftTagSize {
		return c, fmt.Errorf("payload of %d bytes, shorter than iv and tag", len(c.Payload))
	}
	return c, nil
}

// ftAESGCMKey reads key_value out of a serialized AesGcmKey as the doc
// draws it: 0x1a ‖ len ‖ key_value (16 or 32 bytes), plus an optional
// version field 0x08 0x00 (accepted before or after key_value).
func ftAESGCMKey(ser []byte) ([]byte, error) {
	p := ser
	var key []byte
	version := false
	for len(p) > 0 {
		switch {
		case len(p) >= 2 && p[0] == 0x08 && p[1] == 0x00 && !version:
			version, p = true, p[2:]
		case len(p) >= 2 && p[0] == 0x1a && key == nil && (p[1] == 16 || p[1] == 32) && len(p) >= 2+int(p[1]):
			key, p = p[2:2+int(p[1])], p[2+int(p[1]):]
		default:
			return nil, fmt.Errorf("serialized DEK %x is not 0x1a ‖ len ‖ key_value (16/32) [‖ 0x08 0x00]", ser)
		}
	}
	if key == nil {
		return nil, fmt.Errorf("serialized DEK %x has no key_value", ser)
	}
	return key, nil
}

// ftOpenPayload opens payload = iv(12) ‖ ct ‖ tag(16) under key_value.
func ftOpenPayload(key, payload, aad []byte) ([]byte, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	g, err := cipher.NewGCM(b)
	if err != nil {
		return nil, err
	}
	if len(payload) < ftIVSize+ftTagSize {
		return nil, errors.New("short payload")
	}
	pt, err := g.Open(nil, payload[:ftIVSize], payload[ftIVSize:], aad)
	if err != nil {
		return nil, errors.New("payload failed authentication")
	}
	return pt, nil
}

// ftKEK is the token and object of a KEK URI (its query, module and PIN
// source, is the test environment's).
func ftKEK(t *testing.T, uri string) (token, object string) {
	t.Helper()
	path, _, _ := strings.Cut(uri, "?")
	token, object, err := fdParseKEK(path)
	if err != nil {
		t.Fatal(err)
	}
	return token, object
}

// ftKey unwraps enc_dek (PKCS#11 aes-gcm, EMPTY associated data) and
// returns the DEK's key_value.
func (h *fdHSM) ftKey(token, object string, encDEK []byte) ([]byte, error) {
	ser, err := h.fgUnwrapGCM(token, object, encDEK, nil)
	if err != nil {
		return nil, fmt.Errorf("unwrap enc_dek with %s/%s: %w", token, object, err)
	}
	return ftAESGCMKey(ser)
}

// ---------------------------------------------------------------------------
// Reading a dataset

// ftRecord is one record as the doc decoder read it.
type ftRecord struct {
	File   string // relative to the data folder
	Row    int    // in the file
	Tenant string
	Null   bool
	Cell   ftCell
	Stored []byte
	Key    []byte
	AAD    []byte
}

// ftRead decodes every record file under dir with the options o and the
// KEK token/object, compares every non-null email cell with ds.plain and
// checks that exactly the records of ds are there with their null cells
// null. keyLen is the expected DEK size.
func ftRead(t *testing.T, h *fdHSM, ds *tinkDataset, dir string, o ftOpts, token, object string, keyLen int) map[int64]*ftRecord {
	t.Helper()
	out := map[int64]*ftRecord{}
	files := fdFiles(t, dir)
	if len(files) == 0 {
		t.Fatalf("no record files in %s", dir)
	}
	for _, f := range files {
		rel, _ := filepath.Rel(dir, f)
		tab := fdReadParquet(t, f)
		tab.fdCheckCol(t, rel, "email", parquet.ByteArray, "", "optional")
		for i, row := range tab.rows {
			id := row["id"].Int64()
			if _, dup := out[id]; dup {
				t.Fatalf("%s: record %d twice", rel, id)
			}
			r := &ftRecord{File: rel, Row: i, Tenant: fdStr(row["tenant"])}
			out[id] = r
			want, hasPlain := ds.plain[id]
			if row["email"].IsNull() {
				if hasPlain {
					t.Fatalf("%s: record %d: email is null, it was written non-null", rel, id)
				}
				r.Null = true
				continue
			}
			if !hasPlain {
				t.Fatalf("%s: record %d: email was null, it is %d bytes now", rel, id, len(row["email"].ByteArray()))
			}
			r.Stored = bytes.Clone(row["email"].ByteArray())
			c, err := ftSplit(o, r.Stored)
			if err != nil {
				t.Fatalf("%s: record %d: %v", rel, id, err)
			}
			r.Cell = c
			if r.Key, err = h.ftKey(token, object, c.EncDEK); err != nil {
				t.Fatalf("%s: record %d: %v", rel, id, err)
			}
			if keyLen != 0 && len(r.Key) != keyLen {
				t.Fatalf("%s: record %d: key_value of %d bytes, want %d", rel, id, len(r.Key), keyLen)
			}
			if r.AAD, err = fgRender(o.AAD, fgRowCols(tab, row), "email"); err != nil {
				t.Fatal(err)
			}
			pt, err := ftOpenPayload(r.Key, c.Payload, r.AAD)
			if err != nil || string(pt) != want {
				t.Fatalf("%s: record %d: the doc decoder opens %q (%v), want %q", rel, id, pt, err, want)
			}
		}
	}
	if len(out) != countRows(ds) {
		t.Fatalf("%s: %d records, %d written", dir, len(out), countRows(ds))
	}
	return out
}

// ftNegative: the decode is not vacuous. With the wrong KEK the enc_dek
// does not unwrap; a flipped payload byte, a flipped enc_dek byte and a
// wrong AAD do not open.
func ftNegative(t *testing.T, h *fdHSM, recs map[int64]*ftRecord, o ftOpts, token, object, wrongToken, wrongObject string) {
	t.Helper()
	n := 0
	for id, r := range recs {
		if r.Null {
			continue
		}
		n++
		if wrongToken != "" {
			if _, err := h.ftKey(wrongToken, wrongObject, r.Cell.EncDEK); err == nil {
				t.Fatalf("record %d: enc_dek unwraps with %s/%s too", id, wrongToken, wrongObject)
			}
		}
		for _, at := range []int{0, ftIVSize, len(r.Cell.Payload) - 1} {
			bad := bytes.Clone(r.Cell.Payload)
			bad[at] ^= 0x01
			if _, err := ftOpenPayload(r.Key, bad, r.AAD); err == nil {
				t.Fatalf("record %d: opens with payload byte %d flipped", id, at)
			}
		}
		for _, aad := range [][]byte{nil, []byte(r.Tenant + "x"), []byte("tenant-9")} {
			if _, err := ftOpenPayload(r.Key, r.Cell.Payload, aad); err == nil {
				t.Fatalf("record %d: opens with AAD %q (written with %q)", id, aad, r.AAD)
			}
		}
		badDEK := bytes.Clone(r.Cell.EncDEK)
		badDEK[len(badDEK)/2] ^= 0x01
		if _, err := h.ftKey(token, object, badDEK); err == nil {
			t.Fatalf("record %d: a flipped enc_dek byte still unwraps", id)
		}
		// The payload does not open with the raw-option parse of a
		// prefixed cell, nor a prefixed parse of a raw one.
		other := o
		other.Prefix = map[string]string{"raw": "tink", "tink": "raw", "legacy": "raw"}[o.Prefix]
		if c, err := ftSplit(other, r.Stored); err == nil {
			if k, err := h.ftKey(token, object, c.EncDEK); err == nil {
				if _, err := ftOpenPayload(k, c.Payload, r.AAD); err == nil {
					t.Fatalf("record %d: opens with prefix %s as well as %s", id, other.Prefix, o.Prefix)
				}
			}
		}
	}
	if n == 0 {
		t.Fatal("no non-null cells for the negative controls")
	}
}

// ---------------------------------------------------------------------------
// The ledger (bullet "Ledger" of the subsection)

// ftProofs reads the proof column of a run's ledger rows by record id.
func ftProofs(t *testing.T, ledger, runID string) map[string]string {
	t.Helper()
	dir := filepath.Join(ledger, "run_id="+runID)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range ents {
		if n := e.Name(); strings.HasPrefix(n, "part-") && strings.HasSuffix(n, ".parquet") {
			for _, r := range fdReadParquet(t, filepath.Join(dir, n)).rows {
				if r["unit"].IsNull() || fdStr(r["unit"]) != "record" {
					continue
				}
				if p, ok := r["proof"]; ok {
					out[fdStr(r["record_id"])] = fdStr(p)
				}
			}
		}
	}
	return out
}

func ftHex8(b []byte) string {
	s := sha256.Sum256(b)
	return "wrapped:" + hex.EncodeToString(s[:8])
}

// ftCheckLedger: one row per record, unit record; for a record with a
// cell, proof cell, dek_id and new_dek_id "wrapped:" ‖ hex of the first 8
// bytes of SHA-256 of the old and new enc_dek, checksum SHA-256 of the new
// cell (rewrap) or sha256-tags: (reencrypt), bytes the new cell's length;
// for a record whose cell is null, empty names, bytes 0 and the checksum
// of nothing.
func ftCheckLedger(t *testing.T, ledger, runID string, src, dst map[int64]*ftRecord, rewrap bool) {
	t.Helper()
	rows := fdReadLedger(t, ledger, runID)
	proofs := ftProofs(t, ledger, runID)
	seen, bad, nulls := map[string]bool{}, 0, 0
	report := func(format string, a ...any) {
		if bad++; bad <= 3 {
			t.Errorf(format, a...)
		}
	}
	for _, r := range rows {
		if r.Unit != "record" || r.Status != "migrated" {
			t.Fatalf("ledger row %+v: doc says one row per record (unit record), all migrated here", r)
		}
		if seen[r.RecordID] {
			t.Fatalf("record %s: two ledger rows", r.RecordID)
		}
		seen[r.RecordID] = true
		id, _ := strconv.ParseInt(r.RecordID, 10, 64)
		s, d := src[id], dst[id]
		if s == nil || d == nil {
			t.Fatalf("ledger row for record %q, not in the data", r.RecordID)
		}
		if d.Null {
			// The doc: both names empty, bytes 0, the checksum of nothing.
			nulls++
			empty := sha256.Sum256(nil)
			want := hex.EncodeToString(empty[:])
			if !rewrap {
				want = "sha256-tags:" + want
			}
			if r.DEKID != "" || r.NewDEKID != "" || r.Bytes != 0 || r.Checksum != want {
				report("record %s (null cell): ledger dek_id %q new_dek_id %q bytes %d checksum %q, the doc gives empty names, 0 and %q", r.RecordID, r.DEKID, r.NewDEKID, r.Bytes, r.Checksum, want)
			}
			continue
		}
		if p := proofs[r.RecordID]; p != "cell" {
			report("record %s: ledger proof %q, doc says cell", r.RecordID, p)
		}
		for _, k := range []struct {
			col, got string
			encDEK   []byte
		}{{"dek_id", r.DEKID, s.Cell.EncDEK}, {"new_dek_id", r.NewDEKID, d.Cell.EncDEK}} {
			// The doc: "wrapped:" ‖ hex of the first 8 bytes of
			// SHA-256(enc_dek), the blob alone.
			if k.got != ftHex8(k.encDEK) {
				report("record %s: ledger %s %q, the doc gives %q", r.RecordID, k.col, k.got, ftHex8(k.encDEK))
			}
		}
		sum := sha256.Sum256(d.Stored)
		tags := sha256.Sum256(append(binary.BigEndian.AppendUint32(nil, uint32(len(d.Stored))), d.Cell.Payload[len(d.Cell.Payload)-ftTagSize:]...))
		want, alt := hex.EncodeToString(sum[:]), "sha256-tags:"+hex.EncodeToString(tags[:])
		if !rewrap {
			want, alt = alt, want
		}
		if r.Checksum != want {
			report("record %s: ledger checksum %q, doc gives %q (rewrap %v); observed is %s", r.RecordID, r.Checksum, want, rewrap,
				fgWhich(r.Checksum, map[string]string{"the other mode's checksum": alt}))
		}
		if r.Bytes != int64(len(d.Stored)) {
			report("record %s: ledger bytes %d, the new cell is %d bytes", r.RecordID, r.Bytes, len(d.Stored))
		}
	}
	if bad > 0 {
		t.Errorf("%d ledger mismatches with the doc", bad)
	}
	if len(seen) != len(dst) {
		t.Fatalf("%d ledger records, %d in the data", len(seen), len(dst))
	}
}

// ---------------------------------------------------------------------------
// The test

func TestFormatDocTinkEnvelope(t *testing.T) {
	srcURI, dstURI := env.KEK("source", "kek-aes"), env.KEK("target", "kek-aes")
	srcTok, srcObj := ftKEK(t, srcURI)
	dstTok, dstObj := ftKEK(t, dstURI)
	app := aead.NewKMSEnvelopeAEAD2(aead.AES256GCMKeyTemplate(), newP11AEAD(t, "source", "src-pin-1234", "kek-aes"))
	ds := writeTinkDataset(t, app, 2, 48)
	opts := map[string]string{"aad": "{tenant}"}
	h := fdOpenHSM(t)

	// The decoder reads what Tink itself wrote: the doc describes Tink's
	// cells, not only rekey's.
	srcO := ftMustOpts(t, opts)
	src := ftRead(t, h, ds, ds.dir, srcO, srcTok, srcObj, 32)
	ftNegative(t, h, src, srcO, srcTok, srcObj, dstTok, dstObj)
	nulls := 0
	for _, r := range src {
		if r.Null {
			nulls++
		}
	}
	if nulls == 0 || nulls == len(src) {
		t.Fatalf("%d null cells of %d records", nulls, len(src))
	}

	t.Run("rewrap", func(t *testing.T) {
		j := tinkJob(t, schemas.ModeRewrap, "ft-rw", ds, srcURI, dstURI, opts)
		m := runJob(t, j)
		if m.Status != "succeeded" || m.Totals.RecordsFailed != 0 || m.Totals.RecordsMigrated != int64(len(src)) {
			t.Fatalf("manifest %s %+v", m.Status, m.Totals)
		}
		o := srcO // a rewrap keeps the source's format and options
		dst := ftRead(t, h, ds, j.Target.Data, o, dstTok, dstObj, 32)
		ftNegative(t, h, dst, o, dstTok, dstObj, srcTok, srcObj)
		// Prefix and payload byte for byte the source's; the enc_dek new;
		// the same files, rows and other columns.
		for id, d := range dst {
			s := src[id]
			if d.File != s.File || d.Row != s.Row || d.Tenant != s.Tenant || d.Null != s.Null {
				t.Fatalf("record %d: %s row %d tenant %q, source %s row %d tenant %q", id, d.File, d.Row, d.Tenant, s.File, s.Row, s.Tenant)
			}
			if d.Null {
				continue
			}
			if !bytes.Equal(d.Cell.Prefix, s.Cell.Prefix) || !bytes.Equal(d.Cell.Payload, s.Cell.Payload) {
				t.Fatalf("record %d: prefix or payload changed in a rewrap", id)
			}
			if bytes.Equal(d.Cell.EncDEK, s.Cell.EncDEK) {
				t.Fatalf("record %d: enc_dek not rewrapped", id)
			}
			if !bytes.Equal(d.Key, s.Key) {
				t.Fatalf("record %d: the rewrapped DEK is another key", id)
			}
		}
		checkPayloadsKept(t, ds.dir, j.Target.Data, 0)
		ftCheckLedger(t, j.Ledger, j.RunID, src, dst, true)
		if dirHash(t, ds.dir) != ds.hash {
			t.Fatal("the source changed")
		}
	})

	for _, tc := range []struct {
		name    string
		target  map[string]string // nil: the source's options
		keyLen  int
		keyID   uint32
		prefix0 byte
	}{
		{"reencrypt", nil, 32, 0, 0},
		{"reencrypt-prefix-tink-aes128", map[string]string{"aad": "{tenant}", "prefix": "tink", "key_id": "305419896", "dek_template": "AES128_GCM"}, 16, 305419896, 0x01},
		{"reencrypt-prefix-legacy", map[string]string{"aad": "{tenant}", "prefix": "legacy", "key_id": "7"}, 32, 7, 0x00},
	} {
		t.Run(tc.name, func(t *testing.T) {
			j := tinkJob(t, schemas.ModeReencrypt, "ft-"+tc.name, ds, srcURI, dstURI, opts)
			if tc.target != nil {
				j.Target.FormatOptions = tc.target
				// Without key_id the doc says a prefixed target is refused.
				noID := map[string]string{}
				for k, v := range tc.target {
					if k != "key_id" {
						noID[k] = v
					}
				}
				jj := *j
				jj.Target.FormatOptions = noID
				if err := jj.Validate(); err == nil || !strings.Contains(err.Error(), "key_id") {
					t.Fatalf("reencrypt into prefix %s without key_id: validate = %v, doc says key_id is required", tc.target["prefix"], err)
				}
			}
			m := runJob(t, j)
			if m.Status != "succeeded" || m.Totals.RecordsFailed != 0 || m.Totals.RecordsMigrated != int64(len(src)) {
				t.Fatalf("manifest %s %+v", m.Status, m.Totals)
			}
			o := srcO
			if tc.target != nil {
				o = ftMustOpts(t, tc.target)
			}
			if o.KeySize != tc.keyLen {
				t.Fatalf("dek_template gives %d-byte keys, want %d", o.KeySize, tc.keyLen)
			}
			dst := ftRead(t, h, ds, j.Target.Data, o, dstTok, dstObj, tc.keyLen)
			ftNegative(t, h, dst, o, dstTok, dstObj, srcTok, srcObj)
			keys, ivs := map[string]bool{}, map[string]bool{}
			for id, d := range dst {
				if d.Null {
					continue
				}
				if o.Prefix != "raw" && (len(d.Cell.Prefix) != 5 || d.Cell.Prefix[0] != tc.prefix0 || d.Cell.KeyID != tc.keyID) {
					t.Fatalf("record %d: prefix %x, want 0x%02x ‖ uint32_be(%d)", id, d.Cell.Prefix, tc.prefix0, tc.keyID)
				}
				// A fresh DEK and IV for every cell.
				s := src[id]
				if bytes.Equal(d.Key[:min(len(d.Key), len(s.Key))], s.Key[:min(len(d.Key), len(s.Key))]) || keys[string(d.Key)] {
					t.Fatalf("record %d: DEK not fresh", id)
				}
				if iv := string(d.Cell.Payload[:ftIVSize]); iv == string(s.Cell.Payload[:ftIVSize]) || ivs[iv] {
					t.Fatalf("record %d: IV not fresh", id)
				}
				keys[string(d.Key)], ivs[string(d.Cell.Payload[:ftIVSize])] = true, true
			}
			ftCheckLedger(t, j.Ledger, j.RunID, src, dst, false)
			if dirHash(t, ds.dir) != ds.hash {
				t.Fatal("the source changed")
			}
		})
	}
}
