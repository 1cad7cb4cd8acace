package pipeline_test

// An independent reader of rekey's output, written from docs/FORMAT.md only.
//
// Everything prefixed "fd" below is the decoder: it uses the Go standard
// library, parquet-go (generic, schema-driven row reading, no rekey types)
// and miekg/pkcs11 (its own PKCS#11 context on SoftHSM2). It does not import
// rekey's schemas, transforms or hsmio packages. The tests use the existing
// harness (genDataset, d.job, runJob) to produce data and
// transforms.GenPlaintext as the oracle for the expected plaintext.

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/pkcs11"
	"github.com/parquet-go/parquet-go"

	"rekey/schemas"
	"rekey/transforms"
)

// ---------------------------------------------------------------------------
// PKCS#11 (own context; crypto11 owns Initialize/Finalize in this process)

const fdModule = "/usr/lib/softhsm/libsofthsm2.so"

var (
	fdCtxOnce sync.Once
	fdCtx     *pkcs11.Ctx
	fdCtxErr  error
)

func fdP11() (*pkcs11.Ctx, error) {
	fdCtxOnce.Do(func() {
		c := pkcs11.New(fdModule)
		if c == nil {
			fdCtxErr = fmt.Errorf("cannot load %s", fdModule)
			return
		}
		if err := c.Initialize(); err != nil && !fdIsRV(err, pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED) {
			fdCtxErr = fmt.Errorf("C_Initialize: %w", err)
			return
		}
		// Never Finalize: crypto11 shares the module in this process.
		fdCtx = c
	})
	return fdCtx, fdCtxErr
}

func fdIsRV(err error, rv uint) bool {
	var e pkcs11.Error
	return errors.As(err, &e) && uint(e) == rv
}

// fdHSM holds one session per token label. Close closes only its own
// sessions (never C_CloseAllSessions or C_Logout, which would disturb
// crypto11's sessions).
type fdHSM struct {
	ctx      *pkcs11.Ctx
	sessions map[string]pkcs11.SessionHandle
}

func fdOpenHSM(t *testing.T) *fdHSM {
	t.Helper()
	c, err := fdP11()
	if err != nil {
		t.Fatal(err)
	}
	h := &fdHSM{ctx: c, sessions: map[string]pkcs11.SessionHandle{}}
	t.Cleanup(func() {
		for _, s := range h.sessions {
			_ = h.ctx.CloseSession(s)
		}
	})
	return h
}

func (h *fdHSM) session(token string) (pkcs11.SessionHandle, error) {
	if s, ok := h.sessions[token]; ok {
		return s, nil
	}
	slots, err := h.ctx.GetSlotList(true)
	if err != nil {
		return 0, fmt.Errorf("C_GetSlotList: %w", err)
	}
	for _, slot := range slots {
		ti, err := h.ctx.GetTokenInfo(slot)
		if err != nil {
			continue
		}
		if strings.TrimSpace(strings.TrimRight(ti.Label, "\x00")) != token {
			continue
		}
		s, err := h.ctx.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
		if err != nil {
			return 0, fmt.Errorf("C_OpenSession(%s): %w", token, err)
		}
		pin := os.Getenv("REKEY_" + strings.ToUpper(token) + "_PIN")
		if err := h.ctx.Login(s, pkcs11.CKU_USER, pin); err != nil && !fdIsRV(err, pkcs11.CKR_USER_ALREADY_LOGGED_IN) {
			_ = h.ctx.CloseSession(s)
			return 0, fmt.Errorf("C_Login(%s): %w", token, err)
		}
		h.sessions[token] = s
		return s, nil
	}
	return 0, fmt.Errorf("no token labelled %q", token)
}

func (h *fdHSM) find(s pkcs11.SessionHandle, class uint, label string) (pkcs11.ObjectHandle, error) {
	tmpl := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, class),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	}
	if err := h.ctx.FindObjectsInit(s, tmpl); err != nil {
		return 0, err
	}
	objs, _, err := h.ctx.FindObjects(s, 2)
	_ = h.ctx.FindObjectsFinal(s)
	if err != nil {
		return 0, err
	}
	if len(objs) != 1 {
		return 0, fmt.Errorf("%d objects labelled %q of class %d", len(objs), label, class)
	}
	return objs[0], nil
}

// fdParseKEK reads the RFC 7512 URI of section 1 (path attributes only;
// the doc says there is no PIN or module in it).
func fdParseKEK(uri string) (token, object string, err error) {
	rest, ok := strings.CutPrefix(uri, "pkcs11:")
	if !ok {
		return "", "", fmt.Errorf("not a pkcs11: URI: %q", uri)
	}
	if i := strings.IndexByte(rest, '?'); i >= 0 {
		return "", "", fmt.Errorf("kek URI %q has a query part (doc: without PIN or module)", uri)
	}
	for _, attr := range strings.Split(rest, ";") {
		k, v, _ := strings.Cut(attr, "=")
		v, err = url.PathUnescape(v)
		if err != nil {
			return "", "", err
		}
		switch k {
		case "token":
			token = v
		case "object":
			object = v
		}
	}
	if token == "" || object == "" {
		return "", "", fmt.Errorf("kek URI %q lacks token or object", uri)
	}
	return token, object, nil
}

// unwrap returns the 32-byte DEK of a DEK-table row.
func (h *fdHSM) unwrap(d fdDEK) ([]byte, error) {
	token, object, err := fdParseKEK(d.KEK)
	if err != nil {
		return nil, err
	}
	s, err := h.session(token)
	if err != nil {
		return nil, err
	}
	var dek []byte
	switch d.Wrap {
	case "aes-gcm":
		if len(d.Wrapped) != 60 {
			return nil, fmt.Errorf("aes-gcm wrapped key is %d bytes, doc says 60", len(d.Wrapped))
		}
		kek, err := h.find(s, pkcs11.CKO_SECRET_KEY, object)
		if err != nil {
			return nil, err
		}
		aad := append([]byte("rekey.dek.v1\x00"), d.ID...)
		params := pkcs11.NewGCMParams(d.Wrapped[:12], aad, 128)
		defer params.Free()
		if err := h.ctx.DecryptInit(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}, kek); err != nil {
			return nil, fmt.Errorf("C_DecryptInit(AES_GCM): %w", err)
		}
		if dek, err = h.ctx.Decrypt(s, d.Wrapped[12:]); err != nil {
			return nil, fmt.Errorf("C_Decrypt(AES_GCM): %w", err)
		}
	case "aes-kwp":
		kek, err := h.find(s, pkcs11.CKO_SECRET_KEY, object)
		if err != nil {
			return nil, err
		}
		tmpl := []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, false),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true),
		}
		obj, err := h.ctx.UnwrapKey(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_WRAP_PAD, nil)}, kek, d.Wrapped, tmpl)
		if err != nil {
			return nil, fmt.Errorf("C_UnwrapKey(AES_KEY_WRAP_PAD): %w", err)
		}
		attrs, err := h.ctx.GetAttributeValue(s, obj, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
		_ = h.ctx.DestroyObject(s, obj)
		if err != nil {
			return nil, fmt.Errorf("C_GetAttributeValue(CKA_VALUE): %w", err)
		}
		dek = attrs[0].Value
	case "rsa-oaep-sha1":
		kek, err := h.find(s, pkcs11.CKO_PRIVATE_KEY, object)
		if err != nil {
			return nil, err
		}
		params := pkcs11.NewOAEPParams(pkcs11.CKM_SHA_1, pkcs11.CKG_MGF1_SHA1, pkcs11.CKZ_DATA_SPECIFIED, nil)
		if err := h.ctx.DecryptInit(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_OAEP, params)}, kek); err != nil {
			return nil, fmt.Errorf("C_DecryptInit(RSA_PKCS_OAEP): %w", err)
		}
		if dek, err = h.ctx.Decrypt(s, d.Wrapped); err != nil {
			return nil, fmt.Errorf("C_Decrypt(RSA_PKCS_OAEP): %w", err)
		}
	default:
		return nil, fmt.Errorf("wrap %q not supported by this reader", d.Wrap)
	}
	if len(dek) != 32 {
		return nil, fmt.Errorf("DEK %q is %d bytes, doc says 256-bit", d.ID, len(dek))
	}
	return dek, nil
}

// ---------------------------------------------------------------------------
// Generic Parquet reading

// fdFiles lists the *.parquet files of a folder tree, skipping names that
// start with "." or "_" (applied to directories as well: the doc does not say).
func fdFiles(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := de.Name()
		if p != root && (strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_")) {
			if de.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if !de.IsDir() && strings.HasSuffix(name, ".parquet") {
			out = append(out, p)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", root, err)
	}
	sort.Strings(out)
	return out
}

// fdTable is one Parquet file read row by row into column-name -> value.
type fdTable struct {
	schema    *parquet.Schema
	rowGroups []int64 // rows per row group
	rows      []map[string]parquet.Value
}

func fdReadParquet(t *testing.T, path string) *fdTable {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	pf, err := parquet.OpenFile(f, st.Size())
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	tab := &fdTable{schema: pf.Schema()}
	names := map[int]string{}
	for _, p := range pf.Schema().Columns() {
		leaf, _ := pf.Schema().Lookup(p...)
		if len(p) != 1 {
			continue // only flat columns matter here
		}
		names[leaf.ColumnIndex] = p[0]
	}
	buf := make([]parquet.Row, 64)
	for _, rg := range pf.RowGroups() {
		tab.rowGroups = append(tab.rowGroups, rg.NumRows())
		rows := rg.Rows()
		for {
			n, err := rows.ReadRows(buf)
			for _, row := range buf[:n] {
				m := map[string]parquet.Value{}
				for _, v := range row {
					if name, ok := names[v.Column()]; ok {
						m[name] = v.Clone()
					}
				}
				tab.rows = append(tab.rows, m)
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				rows.Close()
				t.Fatalf("%s: %v", path, err)
			}
		}
		rows.Close()
	}
	return tab
}

func (tab *fdTable) leaf(t *testing.T, col string) parquet.LeafColumn {
	t.Helper()
	leaf, ok := tab.schema.Lookup(col)
	if !ok {
		t.Fatalf("no column %q in schema %v", col, tab.schema)
	}
	if leaf.MaxRepetitionLevel != 0 {
		t.Fatalf("column %q is repeated", col)
	}
	return leaf
}

// fdCheckCol checks a column against the doc's type table: physical kind,
// logical annotation ("" = none required) and repetition ("required",
// "optional" or "" when the doc does not say).
func (tab *fdTable) fdCheckCol(t *testing.T, file, col string, kind parquet.Kind, logical, rep string) {
	t.Helper()
	leaf := tab.leaf(t, col)
	typ := leaf.Node.Type()
	if typ.Kind() != kind {
		t.Fatalf("%s: column %s is %v, doc says %v", file, col, typ.Kind(), kind)
	}
	lt := ""
	if l := typ.LogicalType(); l != nil {
		lt = l.String()
	}
	if !strings.Contains(lt, logical) {
		t.Fatalf("%s: column %s has logical type %q, doc says %s", file, col, lt, logical)
	}
	got := "required"
	if leaf.Node.Optional() {
		got = "optional"
	}
	if rep != "" && got != rep {
		t.Fatalf("%s: column %s is %s, doc says %s", file, col, got, rep)
	}
}

func fdStr(v parquet.Value) string {
	if v.IsNull() {
		return ""
	}
	return string(v.ByteArray())
}

// ---------------------------------------------------------------------------
// Section 1: DEK table

type fdDEK struct {
	ID, KEK, Wrap string
	Wrapped       []byte
	Created       time.Time
}

func fdReadDEKTable(t *testing.T, dir string) map[string]fdDEK {
	t.Helper()
	out := map[string]fdDEK{}
	files := fdFiles(t, dir)
	if len(files) == 0 {
		t.Fatalf("no DEK table files in %s", dir)
	}
	for _, f := range files {
		tab := fdReadParquet(t, f)
		for _, c := range []string{"dek_id", "kek", "wrap"} {
			tab.fdCheckCol(t, f, c, parquet.ByteArray, "STRING", "required")
		}
		tab.fdCheckCol(t, f, "wrapped", parquet.ByteArray, "", "required")
		tab.fdCheckCol(t, f, "created", parquet.Int64, "TIMESTAMP", "")
		fdLogOnce(t, "dek table created", tab.leaf(t, "created").Node.Type().LogicalType().String()+" optional="+fmt.Sprint(tab.leaf(t, "created").Node.Optional()))
		for _, r := range tab.rows {
			d := fdDEK{ID: fdStr(r["dek_id"]), KEK: fdStr(r["kek"]), Wrap: fdStr(r["wrap"]),
				Wrapped: bytes.Clone(r["wrapped"].ByteArray()), Created: time.UnixMicro(r["created"].Int64()).UTC()}
			if l := len(d.ID); l < 1 || l > 256 {
				t.Fatalf("%s: dek_id length %d", f, l)
			}
			if len(d.Wrapped) == 0 || len(d.Wrapped) > 4096 {
				t.Fatalf("%s: wrapped length %d", f, len(d.Wrapped))
			}
			if _, dup := out[d.ID]; dup {
				t.Fatalf("dek_id %q appears twice in %s", d.ID, dir)
			}
			out[d.ID] = d
		}
	}
	return out
}

// ---------------------------------------------------------------------------
// Section 2: records and cells

func fdCellAAD(column, recordID, dekID string) []byte {
	b := []byte("rekey.cell.v1\x00")
	for _, s := range []string{column, recordID, dekID} {
		b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
		b = append(b, s...)
	}
	return b
}

func fdOpenCell(dek, cell, aad []byte) ([]byte, error) {
	if len(cell) < 29 || cell[0] != 0x01 {
		return nil, errors.New("not a version-1 cell")
	}
	blk, err := aes.NewCipher(dek)
	if err != nil {
		return nil, err
	}
	g, err := cipher.NewGCM(blk) // 12-byte nonce, 16-byte tag
	if err != nil {
		return nil, err
	}
	return g.Open(nil, cell[1:13], cell[13:], aad)
}

// fdCanonicalID is the canonical text of section 2.
func fdCanonicalID(kind parquet.Kind, v parquet.Value) (string, error) {
	if v.IsNull() {
		return "", errors.New("null record id (doc does not say)")
	}
	switch kind {
	case parquet.Int32:
		return strconv.FormatInt(int64(v.Int32()), 10), nil
	case parquet.Int64:
		return strconv.FormatInt(v.Int64(), 10), nil
	case parquet.ByteArray, parquet.FixedLenByteArray:
		return string(v.ByteArray()), nil
	}
	return "", fmt.Errorf("doc defines no canonical text for %v ids", kind)
}

type fdRecord struct {
	File     string // relative to the data root
	ID       string
	DEKID    string
	Cells    map[string][]byte // raw cell; nil = null
	Plain    map[string][]byte // decrypted cell; nil = null
	Other    map[string]string // every other column, printed
	RowGroup int
}

type fdFile struct {
	Rel       string
	RowGroups []int64
	Records   []*fdRecord
}

// fdDecrypt reads every record file under data and decrypts every cell of
// the encrypted columns with the DEKs of the table (unwrapped by the HSM).
func fdDecrypt(t *testing.T, h *fdHSM, data string, table map[string]fdDEK, encrypted []string) []*fdFile {
	t.Helper()
	deks := map[string][]byte{}
	var out []*fdFile
	for _, f := range fdFiles(t, data) {
		rel, _ := filepath.Rel(data, f)
		tab := fdReadParquet(t, f)
		idKind := tab.leaf(t, "id").Node.Type().Kind()
		if k := tab.leaf(t, "dek_id").Node.Type().Kind(); k != parquet.ByteArray {
			t.Fatalf("%s: dek_id is %v", rel, k)
		}
		for _, c := range encrypted {
			if k := tab.leaf(t, c).Node.Type().Kind(); k != parquet.ByteArray {
				t.Fatalf("%s: encrypted column %s is %v", rel, c, k)
			}
		}
		ff := &fdFile{Rel: rel, RowGroups: tab.rowGroups}
		rg, left := 0, int64(0)
		if len(tab.rowGroups) > 0 {
			left = tab.rowGroups[0]
		}
		for _, row := range tab.rows {
			for left == 0 {
				rg++
				left = tab.rowGroups[rg]
			}
			left--
			id, err := fdCanonicalID(idKind, row["id"])
			if err != nil {
				t.Fatalf("%s: %v", rel, err)
			}
			r := &fdRecord{File: rel, ID: id, DEKID: fdStr(row["dek_id"]), RowGroup: rg,
				Cells: map[string][]byte{}, Plain: map[string][]byte{}, Other: map[string]string{}}
			for name, v := range row {
				if name == "dek_id" || fdContains(encrypted, name) {
					continue
				}
				if v.IsNull() {
					r.Other[name] = "NULL"
				} else {
					r.Other[name] = v.Kind().String() + ":" + v.String()
				}
			}
			dek, ok := deks[r.DEKID]
			if !ok {
				d, ok := table[r.DEKID]
				if !ok {
					t.Fatalf("%s record %s names DEK %q, not in the table", rel, id, r.DEKID)
				}
				if dek, err = h.unwrap(d); err != nil {
					t.Fatalf("unwrap %q (%s, %s): %v", d.ID, d.Wrap, d.KEK, err)
				}
				deks[r.DEKID] = dek
			}
			for _, c := range encrypted {
				v := row[c]
				if v.IsNull() {
					r.Cells[c], r.Plain[c] = nil, nil
					continue
				}
				cell := bytes.Clone(v.ByteArray())
				pt, err := fdOpenCell(dek, cell, fdCellAAD(c, id, r.DEKID))
				if err != nil {
					t.Fatalf("%s record %s column %s: %v", rel, id, c, err)
				}
				if pt == nil {
					pt = []byte{}
				}
				r.Cells[c], r.Plain[c] = cell, pt
			}
			ff.Records = append(ff.Records, r)
		}
		out = append(out, ff)
	}
	for _, k := range deks {
		clear(k)
	}
	return out
}

var fdLogged sync.Map

func fdLogOnce(t *testing.T, key, msg string) {
	if _, done := fdLogged.LoadOrStore(key, true); !done {
		t.Logf("%s: %s", key, msg)
	}
}

func fdContains(s []string, x string) bool {
	for _, e := range s {
		if e == x {
			return true
		}
	}
	return false
}

func fdByID(t *testing.T, files []*fdFile) map[string]*fdRecord {
	t.Helper()
	m := map[string]*fdRecord{}
	for _, f := range files {
		for _, r := range f.Records {
			if _, dup := m[r.ID]; dup {
				t.Fatalf("record %s appears twice", r.ID)
			}
			m[r.ID] = r
		}
	}
	return m
}

// ---------------------------------------------------------------------------
// Section 3: ledger and manifest

type fdLedgerRow struct {
	RunID, Mode, Unit, Source, Target, RecordID, DEKID, NewDEKID string
	SourceKEK, TargetKEK, Status, Error, Checksum                string
	Bytes                                                        int64
	At                                                           time.Time
}

func fdReadLedger(t *testing.T, ledger, runID string) []fdLedgerRow {
	t.Helper()
	dir := filepath.Join(ledger, "run_id="+runID)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []fdLedgerRow
	parts := 0
	for _, e := range ents {
		n := e.Name()
		if e.IsDir() || !strings.HasPrefix(n, "part-") || !strings.HasSuffix(n, ".parquet") {
			continue
		}
		parts++
		tab := fdReadParquet(t, filepath.Join(dir, n))
		for _, c := range []string{"run_id", "mode", "unit", "source", "status"} {
			tab.fdCheckCol(t, n, c, parquet.ByteArray, "STRING", "required")
		}
		for _, c := range []string{"target", "record_id", "dek_id", "new_dek_id", "source_kek", "target_kek", "error", "checksum"} {
			tab.fdCheckCol(t, n, c, parquet.ByteArray, "STRING", "optional")
		}
		tab.fdCheckCol(t, n, "bytes", parquet.Int64, "", "")
		tab.fdCheckCol(t, n, "at", parquet.Int64, "TIMESTAMP", "")
		fdLogOnce(t, "ledger at", tab.leaf(t, "at").Node.Type().LogicalType().String()+" optional="+fmt.Sprint(tab.leaf(t, "at").Node.Optional())+
			"; bytes optional="+fmt.Sprint(tab.leaf(t, "bytes").Node.Optional()))
		for _, r := range tab.rows {
			out = append(out, fdLedgerRow{
				RunID: fdStr(r["run_id"]), Mode: fdStr(r["mode"]), Unit: fdStr(r["unit"]), Source: fdStr(r["source"]),
				Target: fdStr(r["target"]), RecordID: fdStr(r["record_id"]), DEKID: fdStr(r["dek_id"]),
				NewDEKID: fdStr(r["new_dek_id"]), SourceKEK: fdStr(r["source_kek"]), TargetKEK: fdStr(r["target_kek"]),
				Status: fdStr(r["status"]), Error: fdStr(r["error"]), Checksum: fdStr(r["checksum"]),
				Bytes: r["bytes"].Int64(), At: time.UnixMicro(r["at"].Int64()).UTC(),
			})
		}
	}
	if parts == 0 {
		t.Fatalf("no ledger parts in %s", dir)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	t.Logf("ledger folder %s: %v", filepath.Base(dir), names)
	return out
}

func fdReadManifest(t *testing.T, ledger, runID string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(ledger, "run_id="+runID, "_manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if m["format"] != "rekey-manifest/1" {
		t.Fatalf("manifest format %v", m["format"])
	}
	return m
}

// ---------------------------------------------------------------------------
// Tests

func TestFormatDocIsEnoughToDecrypt(t *testing.T) {
	for _, tc := range []struct {
		name, mode, srcKEK, srcWrap, dstKEK, dstWrap string
		encrypted                                    []string
	}{
		{"reencrypt-gcm-to-rsa", schemas.ModeReencrypt, "kek-aes", "aes-gcm", "kek-rsa", "rsa-oaep-sha1", []string{"payload"}},
		{"reencrypt-rsa-to-kwp-two-columns", schemas.ModeReencrypt, "kek-rsa", "rsa-oaep-sha1", "kek-aes", "aes-kwp", []string{"payload", "note"}},
		{"rewrap-kwp-to-gcm", schemas.ModeRewrap, "kek-aes", "aes-kwp", "kek-aes", "aes-gcm", []string{"payload"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const files, records, ndeks = 3, 60, 5
			start := time.Now()
			d := genDataset(t, env.KEK("source", tc.srcKEK), tc.srcWrap, files, records, ndeks, tc.encrypted...)
			runID := "fd-" + tc.mode
			j := d.job(tc.mode, runID, env.KEK("target", tc.dstKEK), tc.dstWrap)
			runJob(t, j) // rekey (and crypto11) run first; our PKCS#11 context comes second
			h := fdOpenHSM(t)

			// The DEK tables.
			srcTable := fdReadDEKTable(t, d.gen.DEKs)
			dstTable := fdReadDEKTable(t, j.Target.DEKs)
			if len(srcTable) != ndeks || len(dstTable) != ndeks {
				t.Fatalf("DEK tables: %d source, %d target rows, want %d", len(srcTable), len(dstTable), ndeks)
			}
			newID := func(id string) string {
				if tc.mode == schemas.ModeReencrypt {
					return id + "@" + runID
				}
				return id
			}
			for id := range srcTable {
				nd, ok := dstTable[newID(id)]
				if !ok {
					t.Fatalf("target DEK table lacks %q", newID(id))
				}
				if nd.Wrap != tc.dstWrap {
					t.Fatalf("DEK %q: wrap %q, want %q", nd.ID, nd.Wrap, tc.dstWrap)
				}
				if tok, obj, err := fdParseKEK(nd.KEK); err != nil || tok != "target" || obj != tc.dstKEK {
					t.Fatalf("DEK %q: kek %q (%v)", nd.ID, nd.KEK, err)
				}
				want := map[string]int{"aes-gcm": 60, "aes-kwp": 40}[nd.Wrap]
				if want != 0 && len(nd.Wrapped) != want {
					t.Fatalf("DEK %q: %s wrapped key is %d bytes, doc says %d", nd.ID, nd.Wrap, len(nd.Wrapped), want)
				}
				if tc.mode == schemas.ModeRewrap {
					fdLogOnce(t, "rewrap created", fmt.Sprintf("source %v, target %v (doc does not say)", srcTable[id].Created, nd.Created))
				}
				if tc.mode == schemas.ModeReencrypt && (nd.Created.Before(start.Add(-time.Minute)) || nd.Created.After(time.Now().Add(time.Minute))) {
					t.Fatalf("fresh DEK %q has created=%v", nd.ID, nd.Created)
				}
			}

			// Decrypt: reencrypt -> target data with target table; rewrap ->
			// the untouched source data with the target table.
			src := fdDecrypt(t, h, d.gen.Data, srcTable, tc.encrypted)
			dstData := j.Target.Data
			if tc.mode == schemas.ModeRewrap {
				dstData = d.gen.Data
			}
			dst := fdDecrypt(t, h, dstData, dstTable, tc.encrypted)
			srcBy, dstBy := fdByID(t, src), fdByID(t, dst)
			if len(dstBy) != files*records || len(srcBy) != files*records {
				t.Fatalf("%d source, %d target records, want %d", len(srcBy), len(dstBy), files*records)
			}

			// Same layout, same row groups, same row order (section 2).
			if len(src) != len(dst) {
				t.Fatalf("%d source files, %d target files", len(src), len(dst))
			}
			for i := range src {
				if src[i].Rel != dst[i].Rel || fmt.Sprint(src[i].RowGroups) != fmt.Sprint(dst[i].RowGroups) {
					t.Fatalf("layout: %s %v vs %s %v", src[i].Rel, src[i].RowGroups, dst[i].Rel, dst[i].RowGroups)
				}
				for k := range src[i].Records {
					if src[i].Records[k].ID != dst[i].Records[k].ID {
						t.Fatalf("%s row %d: id %s became %s", src[i].Rel, k, src[i].Records[k].ID, dst[i].Records[k].ID)
					}
				}
			}

			// Plaintext against the oracle; nulls stay null; other columns unchanged.
			nulls, cells := 0, 0
			for id, o := range dstBy {
				s := srcBy[id]
				n, err := strconv.ParseInt(id, 10, 64)
				if err != nil {
					t.Fatalf("generated id %q not an integer", id)
				}
				if o.DEKID != newID(s.DEKID) {
					t.Fatalf("record %s: dek_id %q, want %q", id, o.DEKID, newID(s.DEKID))
				}
				for _, c := range tc.encrypted {
					got := o.Plain[c]
					if got == nil {
						if s.Cells[c] != nil {
							t.Fatalf("record %s column %s: became null", id, c)
						}
						nulls++
						continue
					}
					if s.Cells[c] == nil {
						t.Fatalf("record %s column %s: null became non-null", id, c)
					}
					if want := transforms.GenPlaintext(&d.gen, c, n); !bytes.Equal(got, want) {
						t.Fatalf("record %s column %s: plaintext is not the generated one (%d vs %d bytes)", id, c, len(got), len(want))
					}
					if tc.mode == schemas.ModeReencrypt && bytes.Equal(o.Cells[c], s.Cells[c]) {
						t.Fatalf("record %s column %s: cell not re-encrypted", id, c)
					}
					cells++
				}
				if fmt.Sprint(o.Other) != fmt.Sprint(s.Other) {
					t.Fatalf("record %s: other columns changed:\n%v\n%v", id, s.Other, o.Other)
				}
			}
			if fdContains(tc.encrypted, "note") && nulls == 0 {
				t.Fatalf("no null note cells: the null case was not exercised")
			}
			t.Logf("decrypted %d cells (%d nulls kept) in %d records with an independent decoder", cells, nulls, len(dstBy))

			// Negative controls.
			fdNegative(t, h, dst, dstTable, tc.encrypted[0])

			// Ledger (section 3) with our own reader.
			rows := fdReadLedger(t, j.Ledger, runID)
			counts := map[string]int{}
			for _, r := range rows {
				counts[r.Unit+"/"+r.Status]++
				if r.RunID != runID || r.Mode != tc.mode || r.At.IsZero() || r.Source == "" {
					t.Fatalf("ledger row %+v", r)
				}
				switch r.Unit {
				case "record":
					o, ok := dstBy[r.RecordID]
					if !ok {
						t.Fatalf("ledger names record %q, not in the target", r.RecordID)
					}
					// "sha256-tags:": each new cell's length (4 bytes big-endian)
					// and the 16-byte tag that ends its envelope, in column order.
					var cat, tags []byte
					for _, c := range tc.encrypted { // "column order": the job's order (= schema order here)
						cell := o.Cells[c]
						if cell == nil {
							continue
						}
						cat = append(cat, cell...)
						tags = binary.BigEndian.AppendUint32(tags, uint32(len(cell)))
						tags = append(tags, cell[len(cell)-16:]...)
					}
					sum := sha256.Sum256(tags)
					if r.Checksum != "sha256-tags:"+hex.EncodeToString(sum[:]) || r.Bytes != int64(len(cat)) {
						t.Fatalf("record %s: ledger checksum/bytes %s/%d, computed sha256-tags:%x/%d", r.RecordID, r.Checksum, r.Bytes, sum, len(cat))
					}
					if r.DEKID != srcBy[r.RecordID].DEKID || r.NewDEKID != o.DEKID {
						t.Fatalf("record %s: ledger dek %q -> %q, data %q -> %q", r.RecordID, r.DEKID, r.NewDEKID, srcBy[r.RecordID].DEKID, o.DEKID)
					}
				case "dek":
					nd, ok := dstTable[r.NewDEKID]
					if !ok || r.NewDEKID != newID(r.DEKID) {
						t.Fatalf("ledger dek row %q -> %q", r.DEKID, r.NewDEKID)
					}
					sum := sha256.Sum256(nd.Wrapped)
					if r.Checksum != hex.EncodeToString(sum[:]) || r.Bytes != int64(len(nd.Wrapped)) {
						t.Fatalf("dek %s: ledger checksum/bytes %s/%d, computed %x/%d", r.NewDEKID, r.Checksum, r.Bytes, sum, len(nd.Wrapped))
					}
				}
			}
			want := map[string]int{"dek/migrated": ndeks}
			if tc.mode == schemas.ModeReencrypt {
				want["record/migrated"] = files * records
			}
			if fmt.Sprint(counts) != fmt.Sprint(want) {
				t.Fatalf("ledger counts %v, want %v", counts, want)
			}
			m := fdReadManifest(t, j.Ledger, runID)
			if m["status"] != "succeeded" {
				t.Fatalf("manifest status %v", m["status"])
			}
			t.Logf("ledger %v; manifest totals %v; sample row %+v", counts, m["totals"], rows[0])
		})
	}
}

// fdNegative: the same decoder must reject a cell moved to another row (same
// DEK, so only the record id differs), another column, another DEK, a flipped
// bit and, for aes-gcm, a wrapped DEK copied to another dek_id.
func fdNegative(t *testing.T, h *fdHSM, files []*fdFile, table map[string]fdDEK, col string) {
	t.Helper()
	var a, b, other *fdRecord
	for _, f := range files {
		for _, r := range f.Records {
			if r.Cells[col] == nil {
				continue
			}
			switch {
			case a == nil:
				a = r
			case b == nil && r.DEKID == a.DEKID:
				b = r
			case other == nil && r.DEKID != a.DEKID:
				other = r
			}
		}
	}
	if a == nil || b == nil || other == nil {
		t.Fatal("negative control: could not find records to swap")
	}
	dekA, err := h.unwrap(table[a.DEKID])
	if err != nil {
		t.Fatal(err)
	}
	dekO, err := h.unwrap(table[other.DEKID])
	if err != nil {
		t.Fatal(err)
	}
	cell := a.Cells[col]
	if _, err := fdOpenCell(dekA, cell, fdCellAAD(col, a.ID, a.DEKID)); err != nil {
		t.Fatalf("positive control failed: %v", err)
	}
	if _, err := fdOpenCell(dekA, cell, fdCellAAD(col, b.ID, b.DEKID)); err == nil {
		t.Fatalf("cell of record %s moved to record %s (same DEK) still authenticates", a.ID, b.ID)
	}
	if _, err := fdOpenCell(dekA, cell, fdCellAAD(col+"x", a.ID, a.DEKID)); err == nil {
		t.Fatal("cell moved to another column still authenticates")
	}
	if _, err := fdOpenCell(dekO, cell, fdCellAAD(col, a.ID, other.DEKID)); err == nil {
		t.Fatal("cell moved to another DEK still authenticates")
	}
	for _, i := range []int{1, 13, len(cell) - 1} {
		bad := bytes.Clone(cell)
		bad[i] ^= 0x04
		if _, err := fdOpenCell(dekA, bad, fdCellAAD(col, a.ID, a.DEKID)); err == nil {
			t.Fatalf("bit flip at byte %d still authenticates", i)
		}
	}
	if d := table[a.DEKID]; d.Wrap == "aes-gcm" {
		moved := d
		moved.ID = other.DEKID // a's wrapped key in other's row
		if _, err := h.unwrap(moved); err == nil {
			t.Fatal("aes-gcm wrapped DEK copied to another row still unwraps")
		}
		if _, err := h.unwrap(d); err != nil { // and the session still works
			t.Fatal(err)
		}
	}
	clear(dekA)
	clear(dekO)
}
