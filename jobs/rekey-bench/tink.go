package main

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThalesGroup/crypto11"
	"github.com/miekg/pkcs11"
	"github.com/parquet-go/parquet-go"
	"github.com/tink-crypto/tink-go/v2/aead"
	gcmpb "github.com/tink-crypto/tink-go/v2/proto/aes_gcm_go_proto"
	"google.golang.org/protobuf/proto"

	"rekey/hsmio"
	"rekey/hsmio/softhsm"
	"rekey/schemas"
)

// The tink section: a dataset written by tink-go's KMS envelope AEAD
// (aead.NewKMSEnvelopeAEAD2(aead.AES256GCMKeyTemplate(), remote)), whose
// remote AEAD is what an application with its KEK in an HSM writes:
// crypto11's AES-GCM on the source token's kek-aes, blob = nonce(12) ||
// ciphertext || tag, no associated data. Every cell carries its own wrapped
// DEK, so `rekey run --mode rewrap` makes, per cell, a source unwrap, a
// target wrap and a target unwrap (verify), and opens the cell with the DEK
// (its proof), then splices the new wrapped DEK in front of the untouched
// payload.
//
// Its peer is a raw PKCS#11 loop over the same cells (`rekey-bench
// tink-raw`, a child process like rekey): miekg/pkcs11 with one logged-in
// session per goroutine on each token and, like the limits section's raw
// loop, either a session copy of each key (the best handle SoftHSM2
// allows) or the token objects; per cell C_Decrypt on the source
// (CKM_AES_GCM, no AAD), a crypto/rand nonce and C_Encrypt on the target,
// C_Decrypt on the target and a compare, and the cell opened in software
// with the DEK (as rekey's proof). The loop's own Parquet read of the
// encrypted DEKs is not timed; rekey's figure is its pipeline time (file
// reads and writes, ledger and all).
//
// The generator and the raw loop run as children because they log in
// to the tokens with their own PKCS#11 library instance (crypto11, miekg)
// and this process's hsmio holds its own.

const (
	tinkFormat = "tink-envelope"
	// tinkCell is the plaintext bytes of every cell (the envelope adds
	// the wrapped DEK, ~60 bytes, and the payload's nonce and tag).
	tinkCell  = 256
	tinkFiles = 4
	tinkToken = "source"
	tinkKey   = "kek-aes"
)

// tinkOptions are the job's source.format_options: the tenant column is
// the cells' associated data.
var tinkOptions = map[string]string{"aad": "{tenant}"}

// tinkRow is the application's table; payload is Tink's.
type tinkRow struct {
	ID      int64  `parquet:"id"`
	Tenant  string `parquet:"tenant"`
	Payload []byte `parquet:"payload"`
}

func keyTinkRaw(g int, copies bool) string {
	if copies {
		return fmt.Sprintf("tink/raw-copy/g%d", g)
	}
	return fmt.Sprintf("tink/raw-token/g%d", g)
}
func keyTinkRekey(runner string) string { return "tink/rekey/rewrap/" + runner }

// newTinkDataset describes the section's dataset: records cells in
// tinkFiles files (records rounded down to a multiple of the files).
func newTinkDataset(root string, records int) *dataset {
	per := records / tinkFiles
	ds := newDataset(root, fmt.Sprintf("tink-%d", per*tinkFiles), tinkCell, tinkFiles, per, per*tinkFiles)
	ds.Format, ds.FormatOptions, ds.DEKs = tinkFormat, tinkOptions, ""
	return ds
}

// generateTink writes ds with `rekey-bench tink-gen` (unless a previous
// bench run left it with the same parameters).
func generateTink(ctx context.Context, ds *dataset, workers int, logs string) error {
	args := []string{"tink-gen", "--out", ds.Data, "--files", strconv.Itoa(ds.Files), "--records", strconv.Itoa(ds.Records),
		"--cell", strconv.Itoa(ds.Cell), "--workers", strconv.Itoa(workers)}
	stamp := append([]string{"tink-gen/v1", sourceKEK()}, args...)
	if stampMatches(ds.Dir, stamp) {
		fmt.Fprintf(os.Stderr, "  dataset %s: reusing %s\n", ds.Name, ds.Dir)
		return nil
	}
	if err := os.RemoveAll(ds.Dir); err != nil {
		return err
	}
	if err := os.MkdirAll(ds.Data, 0o755); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "  dataset %s: %d files x %d records of %s, tink-go KMS envelope cells (remote AEAD: crypto11 AES-GCM on %s/%s)\n",
		ds.Name, ds.Files, ds.Records, cellName(ds.Cell), tinkToken, tinkKey)
	res, err := runChild(ctx, self, args, filepath.Join(logs, "gen-"+ds.Name+".log"))
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "  dataset %s: %s\n", ds.Name, res.Wall.Round(time.Millisecond))
	b, _ := json.Marshal(datasetFormat{Format: ds.Format, Options: ds.FormatOptions})
	if err := os.WriteFile(filepath.Join(ds.Dir, formatFile), b, 0o644); err != nil {
		return err
	}
	return writeStamp(ds.Dir, stamp)
}

// crypto11AEAD is the application's Tink remote AEAD on a PKCS#11 AES key
// (pipeline/tink_test.go's): nonce(12) || ciphertext || tag.
type crypto11AEAD struct{ key *crypto11.SecretKey }

func (a *crypto11AEAD) Encrypt(pt, aad []byte) ([]byte, error) {
	g, err := a.key.NewGCM()
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, 12)
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return g.Seal(nonce, nonce, pt, aad), nil
}

func (a *crypto11AEAD) Decrypt(ct, aad []byte) ([]byte, error) {
	g, err := a.key.NewGCM()
	if err != nil {
		return nil, err
	}
	if len(ct) < 12+16 {
		return nil, errors.New("short ciphertext")
	}
	return g.Open(nil, ct[:12], ct[12:], aad)
}

// tinkGenMain runs `rekey-bench tink-gen` (internal): the application
// writing the dataset, on the source token of SOFTHSM2_CONF (PIN from
// REKEY_SOURCE_PIN).
func tinkGenMain(args []string) error {
	fs := flag.NewFlagSet("rekey-bench tink-gen", flag.ContinueOnError)
	out := fs.String("out", "", "folder of the record files")
	files := fs.Int("files", tinkFiles, "record files")
	records := fs.Int("records", 5000, "records per file")
	cell := fs.Int("cell", tinkCell, "plaintext bytes per cell")
	workers := fs.Int("workers", 2, "goroutines")
	if err := fs.Parse(args); err != nil {
		return err
	}
	c11, err := crypto11.Configure(&crypto11.Config{Path: softhsm.Module, TokenLabel: tinkToken, Pin: os.Getenv("REKEY_SOURCE_PIN"), GCMIVLength: 12})
	if err != nil {
		return fmt.Errorf("crypto11 on token %s: %w", tinkToken, err)
	}
	defer c11.Close()
	k, err := c11.FindKey(nil, []byte(tinkKey))
	if err != nil || k == nil {
		return fmt.Errorf("find %s/%s: %v", tinkToken, tinkKey, err)
	}
	env := aead.NewKMSEnvelopeAEAD2(aead.AES256GCMKeyTemplate(), &crypto11AEAD{key: k})
	id := int64(0)
	for f := 0; f < *files; f++ {
		rows := make([]tinkRow, *records)
		base := id
		err := forEach(len(rows), *workers, func(i int) error {
			r := tinkRow{ID: base + int64(i) + 1}
			r.Tenant = fmt.Sprintf("tenant-%d", r.ID%7)
			pt := make([]byte, *cell)
			if _, err := rand.Read(pt); err != nil {
				return err
			}
			ct, err := env.Encrypt(pt, []byte(r.Tenant))
			if err != nil {
				return fmt.Errorf("record %d: %w", r.ID, err)
			}
			r.Payload = ct
			rows[i] = r
			return nil
		})
		if err != nil {
			return err
		}
		id += int64(len(rows))
		if err := writeRecords(filepath.Join(*out, fmt.Sprintf("part-%05d.parquet", f)), len(rows), rowGroupRows(*cell),
			func(i int) (tinkRow, error) { return rows[i], nil }); err != nil {
			return err
		}
	}
	fmt.Printf("{\"cells\": %d}\n", id)
	return nil
}

// tinkCellParts is one cell as the raw loop needs it.
type tinkCellParts struct {
	encDEK, payload, aad []byte
}

// readTinkCells reads every cell of the dataset's record files and splits
// it: uint32_be(len) || encDEK || payload (prefix raw).
func readTinkCells(dir string) ([]tinkCellParts, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.parquet"))
	if err != nil || len(files) == 0 {
		return nil, fmt.Errorf("no record files in %s (%v)", dir, err)
	}
	var out []tinkCellParts
	for _, f := range files {
		rows, err := parquet.ReadFile[tinkRow](f)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		for _, r := range rows {
			c := r.Payload
			if len(c) < 4 {
				return nil, fmt.Errorf("%s record %d: not a Tink envelope cell", f, r.ID)
			}
			n := int(binary.BigEndian.Uint32(c))
			if n < 12+16 || 4+n > len(c) {
				return nil, fmt.Errorf("%s record %d: encrypted DEK of %d bytes in a %d-byte cell", f, r.ID, n, len(c))
			}
			out = append(out, tinkCellParts{encDEK: c[4 : 4+n], payload: c[4+n:], aad: []byte(r.Tenant)})
		}
	}
	return out, nil
}

// tinkRawResult is what `rekey-bench tink-raw` prints.
type tinkRawResult struct {
	CellsPerS float64 `json:"cells_per_s"`
	Cells     int     `json:"cells"`
	Seconds   float64 `json:"seconds"`
}

// tinkRawMain runs `rekey-bench tink-raw` (internal): the raw PKCS#11 loop
// over a tink dataset, every cell once.
func tinkRawMain(args []string) error {
	fs := flag.NewFlagSet("rekey-bench tink-raw", flag.ContinueOnError)
	data := fs.String("data", "", "folder of the record files")
	g := fs.Int("goroutines", 1, "goroutines (sessions on each token)")
	copies := fs.Bool("session-copy", true, "use a session copy of each key per session (false: the token objects)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *g < 1 {
		return errors.New("--goroutines: at least 1")
	}
	cells, err := readTinkCells(*data)
	if err != nil {
		return err
	}
	p := pkcs11.New(softhsm.Module)
	if p == nil {
		return fmt.Errorf("load %s", softhsm.Module)
	}
	if err := p.Initialize(); err != nil {
		return fmt.Errorf("C_Initialize: %w", err)
	}
	defer func() { _ = p.Finalize(); p.Destroy() }()
	src, err := openP11Side(p, "source", tinkKey, os.Getenv("REKEY_SOURCE_PIN"), *g, *copies)
	if err != nil {
		return err
	}
	defer src.close()
	dst, err := openP11Side(p, "target", tinkKey, os.Getenv("REKEY_TARGET_PIN"), *g, *copies)
	if err != nil {
		return err
	}
	defer dst.close()

	var next atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < *g; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			nonce := make([]byte, 12)
			for {
				i := int(next.Add(1) - 1)
				if i >= len(cells) {
					return
				}
				if err := tinkRawOne(src, dst, w, &cells[i], nonce); err != nil {
					once.Do(func() { firstErr = fmt.Errorf("cell %d: %w", i, err) })
					next.Store(int64(len(cells)))
					return
				}
			}
		}(w)
	}
	wg.Wait()
	el := time.Since(start).Seconds()
	if firstErr != nil {
		return firstErr
	}
	b, _ := json.Marshal(tinkRawResult{CellsPerS: float64(len(cells)) / el, Cells: len(cells), Seconds: el})
	fmt.Println(string(b))
	return nil
}

// tinkRawOne is the per-cell work of goroutine w.
func tinkRawOne(src, dst *p11Side, w int, c *tinkCellParts, nonce []byte) error {
	dek, err := hsmio.RawGCM(src.p, src.sess[w], src.keys[w], false, c.encDEK[:12], nil, c.encDEK[12:])
	defer clear(dek)
	if err != nil {
		return fmt.Errorf("unwrap (source C_Decrypt): %w", err)
	}
	// The DEK's proof, as rekey's: it opens its cell.
	var k gcmpb.AesGcmKey
	if err := proto.Unmarshal(dek, &k); err != nil {
		return fmt.Errorf("the DEK is not a Tink AES-GCM key: %w", err)
	}
	block, err := aes.NewCipher(k.GetKeyValue())
	clear(k.KeyValue)
	if err != nil {
		return err
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		return err
	}
	if len(c.payload) < 12+16 {
		return errors.New("short payload")
	}
	pt, err := gcm.Open(nil, c.payload[:12], c.payload[12:], c.aad)
	clear(pt)
	if err != nil {
		return fmt.Errorf("the DEK does not open the cell: %w", err)
	}
	if _, err := rand.Read(nonce); err != nil {
		return err
	}
	ct, err := hsmio.RawGCM(dst.p, dst.sess[w], dst.keys[w], true, nonce, nil, dek)
	if err != nil {
		return fmt.Errorf("wrap (target C_Encrypt): %w", err)
	}
	back, err := hsmio.RawGCM(dst.p, dst.sess[w], dst.keys[w], false, nonce, nil, ct)
	defer clear(back)
	if err != nil {
		return fmt.Errorf("verify (target C_Decrypt): %w", err)
	}
	if subtle.ConstantTimeCompare(back, dek) != 1 {
		return errors.New("verify: the new wrap does not hold the DEK")
	}
	return nil
}

// p11Side is one token of the raw loop: a session per goroutine and the
// key handle each uses.
type p11Side struct {
	p      *pkcs11.Ctx
	sess   []pkcs11.SessionHandle
	keys   []pkcs11.ObjectHandle
	copies bool
}

func openP11Side(p *pkcs11.Ctx, token, label, pin string, n int, copies bool) (*p11Side, error) {
	slots, err := p.GetSlotList(true)
	if err != nil {
		return nil, err
	}
	slot, found := uint(0), false
	for _, s := range slots {
		ti, err := p.GetTokenInfo(s)
		if err == nil && strings.TrimRight(ti.Label, " \x00") == token {
			slot, found = s, true
			break
		}
	}
	if !found {
		return nil, fmt.Errorf("no token %q", token)
	}
	s := &p11Side{p: p, copies: copies}
	var orig pkcs11.ObjectHandle
	for i := 0; i < n; i++ {
		sh, err := p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
		if err != nil {
			s.close()
			return nil, fmt.Errorf("token %s: open session: %w", token, err)
		}
		s.sess = append(s.sess, sh)
		if i == 0 {
			if err := p.Login(sh, pkcs11.CKU_USER, pin); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_USER_ALREADY_LOGGED_IN)) {
				s.close()
				return nil, fmt.Errorf("token %s: login: %w", token, err)
			}
			if err := p.FindObjectsInit(sh, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
				pkcs11.NewAttribute(pkcs11.CKA_LABEL, label)}); err != nil {
				s.close()
				return nil, err
			}
			hs, _, err := p.FindObjects(sh, 2)
			_ = p.FindObjectsFinal(sh)
			if err != nil || len(hs) != 1 {
				s.close()
				return nil, fmt.Errorf("token %s: key %q: %d found (%v)", token, label, len(hs), err)
			}
			orig = hs[0]
		}
		if !copies {
			s.keys = append(s.keys, orig)
			continue
		}
		h, err := p.CopyObject(sh, orig, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, fmt.Sprintf("rekey-bench-tink-copy-%d", i))})
		if err != nil {
			s.close()
			return nil, fmt.Errorf("token %s: session copy (C_CopyObject): %w", token, err)
		}
		s.keys = append(s.keys, h)
	}
	return s, nil
}

func (s *p11Side) close() {
	for i, sh := range s.sess {
		if s.copies && i < len(s.keys) {
			_ = s.p.DestroyObject(sh, s.keys[i])
		}
		_ = s.p.CloseSession(sh)
	}
	s.sess, s.keys = nil, nil
}

// tinkRuns is one repetition of the section: the raw loops (session
// copies and token objects, 1 and N goroutines) and rekey's rewrap (direct
// runner, default workers), one right after the other, the order rotating
// per repetition.
func tinkRuns(ctx context.Context, c *config, t *table, ds *dataset, rep int, scratch, logs string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	N := c.Workers
	gs := []int{1}
	if N > 1 {
		gs = append(gs, N)
	}
	n := float64(ds.records())
	var order []func() error
	for _, copies := range []bool{true, false} {
		for _, g := range gs {
			order = append(order, func() error {
				args := []string{"tink-raw", "--data", ds.Data, "--goroutines", strconv.Itoa(g), "--session-copy=" + strconv.FormatBool(copies)}
				tag := map[bool]string{true: "copy", false: "token"}[copies]
				cr, err := runChild(ctx, self, args, filepath.Join(logs, fmt.Sprintf("tink-raw-%s-g%d-r%d.log", tag, g, rep)))
				if err != nil {
					return err
				}
				var res tinkRawResult
				if err := json.Unmarshal([]byte(cr.Stdout), &res); err != nil || res.Cells != int(ds.records()) {
					return fmt.Errorf("tink-raw %s g%d: %q: %v", tag, g, cr.Stdout, err)
				}
				what := "raw PKCS#11 loop unwrap+wrap+verify per cell (+ cell open), session copy"
				if !copies {
					what = "raw PKCS#11 loop unwrap+wrap+verify per cell (+ cell open), token object (info)"
				}
				t.addRun(keyTinkRaw(g, copies), &Row{Section: "tink", What: what, Cell: ds.Cell, Workers: g, Unit: "cells/s",
					DEKs: int64(res.Cells), HSMOpsPerDEK: 3}, res.CellsPerS, res.CellsPerS, cr)
				return nil
			})
		}
	}
	order = append(order, func() error {
		id := fmt.Sprintf("tink-rw-direct-r%d", rep)
		cr, m, err := runRekey(ctx, c.Rekey, ds, rekeyRun{Mode: schemas.ModeRewrap, Runner: "direct"}, scratch, logs, id)
		if err != nil {
			return err
		}
		if m.Totals.RecordsMigrated != ds.records() {
			return fmt.Errorf("run %s: %d records migrated, want %d", id, m.Totals.RecordsMigrated, ds.records())
		}
		secs := cr.Pipeline.Seconds()
		if secs <= 0 {
			return fmt.Errorf("run %s: no elapsed time in its output", id)
		}
		t.addRun(keyTinkRekey("direct"), &Row{Section: "tink", What: "rekey rewrap tink-envelope (aad {tenant}) [default workers]", Cell: ds.Cell,
			Workers: N, Runner: "direct", Unit: "cells/s", DEKs: m.Totals.RecordsMigrated, HSMOps: 3 * m.Totals.RecordsMigrated,
			HSMOpsNote: "estimate: unwrap + wrap + verify-unwrap per cell (one DEK per cell; the run's manifest counts 0 DEKs)", DefaultWorkers: true}, n/secs, n/secs, cr)
		return nil
	})
	for i := 0; i < rep%len(order); i++ {
		order = append(order[1:], order[0])
	}
	for _, f := range order {
		if err := f(); err != nil {
			return fmt.Errorf("tink section: %w", err)
		}
	}
	return nil
}

// bestTinkRawCopy is the key of the fastest raw session-copy row (1 or N
// goroutines), "" if there is none.
func (t *table) bestTinkRawCopy(c *config) string {
	best, bv := "", 0.0
	for _, g := range []int{1, c.Workers} {
		if v := t.get(keyTinkRaw(g, true)); v > bv {
			best, bv = keyTinkRaw(g, true), v
		}
	}
	return best
}

// tinkSummary states the section's ratio: rekey over the best raw loop.
func tinkSummary(t *table, c *config) []string {
	r := t.byKey[keyTinkRekey("direct")]
	if r == nil || r.Median == 0 {
		return nil
	}
	s := fmt.Sprintf("rekey rewrap of %d Tink envelope cells (direct, default workers = %d): %s cells/s", r.DEKs, c.Workers, fnum(r.Median))
	if l := t.byKey[r.LimitKey]; l != nil {
		s += fmt.Sprintf(" = %.2fx the raw PKCS#11 loop's best (%s cells/s, session copies, %d goroutine(s); pairs %s)", r.VsLimit, fnum(l.Median), l.Workers, pairs(r.VsLimitPairs))
	}
	var per []string
	for _, g := range []int{1, c.Workers} {
		for _, copies := range []bool{true, false} {
			if v := t.get(keyTinkRaw(g, copies)); v > 0 {
				per = append(per, fmt.Sprintf("%s g%d %.2fx", map[bool]string{true: "copy", false: "token"}[copies], g, r.Median/v))
			}
		}
		if c.Workers == 1 {
			break
		}
	}
	if len(per) > 0 {
		s += "; rekey/raw per loop: " + strings.Join(per, ", ")
	}
	if r.CPUSeconds > 0 {
		s += fmt.Sprintf("; rekey CPU %.2f s per run (%.0f µs/cell)", r.CPUSeconds, r.CPUSeconds/float64(max(r.DEKs, 1))*1e6)
	}
	return []string{s}
}

func tinkNotes(c *config, ds *dataset) []string {
	if ds == nil {
		return nil
	}
	return []string{
		fmt.Sprintf("tink rows: %d records in %d files, one encrypted column of %d-byte plaintexts, written by tink-go aead.NewKMSEnvelopeAEAD2(AES256_GCM) whose remote AEAD is crypto11 AES-GCM on SoftHSM2 source/%s (nonce|ct|tag, no AAD; the tenant column is the cells' associated data, format_options aad: {tenant}); rewrapped to target/%s by `rekey run --mode rewrap --runner direct` (default workers), 3 token calls per cell. cells/s = records / rekey's pipeline time.", ds.records(), ds.Files, ds.Cell, tinkKey, tinkKey),
		"tink raw loop (`rekey-bench tink-raw`, a child process): miekg/pkcs11, one session per goroutine per token, per cell source C_Decrypt (CKM_AES_GCM, no AAD), C_Encrypt and verify C_Decrypt on the target with a crypto/rand nonce, a compare, and the cell opened in software with the DEK (rekey's proof); every cell once, its Parquet read not timed. 'vs limit' of the rekey row is rekey / the best session-copy raw row (1 or N goroutines); the token-object rows are for information ('vs limit' against the session-copy row at the same goroutines).",
	}
}
