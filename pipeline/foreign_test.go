package pipeline_test

import (
	"bufio"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/parquet-go/parquet-go"

	"rekey/pipeline"
	"rekey/providers/keys"
	"rekey/schemas"
)

// Data rekey did not write: cells sealed by third-party libraries (Ruby's
// lockbox, Python's cryptography; testdata/interop), in their own layouts,
// with each row's DEK wrapped in a column next to the data. rekey migrates
// them, and the same libraries read the result back.

// appRow is a record file as an application writes it: text cells, the
// wrapped DEK in its own column (base64 text), a tenant column.
type appRow struct {
	ID         int64  `parquet:"id"`
	Tenant     string `parquet:"tenant"`
	Email      string `parquet:"email"`
	WrappedKey string `parquet:"wrapped_key"`
}

// cellCodec seals and opens cells the way one application or library
// does.
type cellCodec interface {
	encrypt(key []byte, aad *string, pt []byte) string
	decrypt(key []byte, aad *string, cell string) ([]byte, error)
}

// goApp is hand-written Go application code: gcm.Seal(nonce, nonce, pt,
// aad), raw bytes stored as they are.
type goApp struct{}

func (goApp) encrypt(key []byte, aad *string, pt []byte) string {
	gcm := newGCM(key)
	nonce := make([]byte, gcm.NonceSize())
	_, _ = rand.Read(nonce)
	var a []byte
	if aad != nil {
		a = []byte(*aad)
	}
	return string(gcm.Seal(nonce, nonce, pt, a))
}

func (goApp) decrypt(key []byte, aad *string, cell string) ([]byte, error) {
	gcm := newGCM(key)
	if len(cell) < gcm.NonceSize() {
		return nil, fmt.Errorf("short cell")
	}
	var a []byte
	if aad != nil {
		a = []byte(*aad)
	}
	return gcm.Open(nil, []byte(cell[:12]), []byte(cell[12:]), a)
}

func newGCM(key []byte) cipher.AEAD {
	b, err := aes.NewCipher(key)
	if err != nil {
		panic(err)
	}
	g, err := cipher.NewGCM(b)
	if err != nil {
		panic(err)
	}
	return g
}

// cellTool is one of the interop scripts, running for the whole test.
type cellTool struct {
	t   *testing.T
	cmd *exec.Cmd
	in  *json.Encoder
	out *bufio.Scanner
}

func startCellTool(t *testing.T, interp, script string) *cellTool {
	t.Helper()
	if _, err := os.Stat(interp); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is missing: make deps installs ruby, ruby-lockbox and python3-cryptography", interp)
		}
		t.Skipf("%s is missing (make deps installs it)", interp)
	}
	cmd := exec.Command(interp, filepath.Join("..", "testdata", "interop", script))
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stdin.Close(); _ = cmd.Wait() })
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	return &cellTool{t: t, cmd: cmd, in: json.NewEncoder(stdin), out: sc}
}

type toolReq struct {
	Op   string  `json:"op"`
	Key  string  `json:"key"`
	AAD  *string `json:"aad"`
	PT   *string `json:"pt,omitempty"`
	Cell *string `json:"cell,omitempty"`
}

type toolReply struct {
	Cell  string `json:"cell"`
	PT    string `json:"pt"`
	Error string `json:"error"`
}

func (c *cellTool) call(r toolReq) toolReply {
	c.t.Helper()
	if err := c.in.Encode(r); err != nil {
		c.t.Fatal(err)
	}
	if !c.out.Scan() {
		c.t.Fatalf("interop script ended: %v", c.out.Err())
	}
	var rep toolReply
	if err := json.Unmarshal(c.out.Bytes(), &rep); err != nil {
		c.t.Fatal(err)
	}
	return rep
}

func (c *cellTool) encrypt(key []byte, aad *string, pt []byte) string {
	p := base64.StdEncoding.EncodeToString(pt)
	rep := c.call(toolReq{Op: "encrypt", Key: hex.EncodeToString(key), AAD: aad, PT: &p})
	if rep.Error != "" {
		c.t.Fatal(rep.Error)
	}
	return rep.Cell
}

func (c *cellTool) decrypt(key []byte, aad *string, cell string) ([]byte, error) {
	rep := c.call(toolReq{Op: "decrypt", Key: hex.EncodeToString(key), AAD: aad, Cell: &cell})
	if rep.Error != "" {
		return nil, fmt.Errorf("%s", rep.Error)
	}
	return base64.StdEncoding.DecodeString(rep.PT)
}

// appDataset is an application's dataset and what it was made from.
type appDataset struct {
	dir     string
	plain   map[int64]string
	keyOpts map[string]string // format options
	aad     func(r appRow) *string
}

// writeAppDataset has tool seal records 1..n under nKeys random DEKs, each
// wrapped (unbound) by the source KEK and stored base64 in wrapped_key.
func writeAppDataset(t *testing.T, tool cellCodec, kekURI string, keyLen, files, n, nKeys int, opts map[string]string, aad func(r appRow) *string) *appDataset {
	t.Helper()
	ctx := context.Background()
	kek, err := keys.Open(ctx, kekURI, keys.Options{})
	if err != nil {
		t.Fatal(err)
	}
	type dk struct {
		raw     []byte
		wrapped string
	}
	var ks []dk
	for i := 0; i < nKeys; i++ {
		raw := make([]byte, keyLen)
		_, _ = rand.Read(raw)
		d, _ := keys.NewDEK(raw)
		w, err := kek.Wrap(ctx, keys.Binding{}, d)
		if err != nil {
			t.Fatal(err)
		}
		ks = append(ks, dk{raw, base64.StdEncoding.EncodeToString(w)})
	}
	ds := &appDataset{dir: filepath.Join(t.TempDir(), "app"), plain: map[int64]string{}, keyOpts: opts, aad: aad}
	if err := os.MkdirAll(ds.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	id := int64(0)
	for f := 0; f < files; f++ {
		var rows []appRow
		for i := 0; i < n/files; i++ {
			id++
			k := ks[int(id)%nKeys]
			r := appRow{ID: id, Tenant: fmt.Sprintf("tenant-%d", id%4), WrappedKey: k.wrapped}
			pt := fmt.Sprintf("user%d@example.com %s", id, strings.Repeat("x", int(id%7)))
			r.Email = tool.encrypt(k.raw, aad(r), []byte(pt))
			ds.plain[id] = pt
			rows = append(rows, r)
		}
		if err := parquet.WriteFile(filepath.Join(ds.dir, fmt.Sprintf("part-%d.parquet", f)), rows); err != nil {
			t.Fatal(err)
		}
	}
	return ds
}

// readBack has tool open every email cell under data with the wrapped key
// of its row, unwrapped by kekURI: what the application would do.
func readBack(t *testing.T, tool cellCodec, ds *appDataset, data, kekURI string) {
	t.Helper()
	ctx := context.Background()
	kek, err := keys.Open(ctx, kekURI, keys.Options{})
	if err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(data, "*.parquet"))
	seen := 0
	for _, f := range files {
		rows, err := parquet.ReadFile[appRow](f)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rows {
			w, err := base64.StdEncoding.DecodeString(r.WrappedKey)
			if err != nil {
				t.Fatal(err)
			}
			dek, err := kek.Unwrap(ctx, keys.Binding{}, kek.Mechanism(), w)
			if err != nil {
				t.Fatalf("record %d: the new wrapped key does not unwrap with the target KEK: %v", r.ID, err)
			}
			pt, err := tool.decrypt(dek.Bytes(), ds.aad(r), r.Email)
			dek.Zero()
			if err != nil || string(pt) != ds.plain[r.ID] {
				t.Fatalf("record %d: the library reads %q (%v), want %q", r.ID, pt, err, ds.plain[r.ID])
			}
			seen++
		}
	}
	if seen != len(ds.plain) {
		t.Fatalf("%d records read back, %d written", seen, len(ds.plain))
	}
}

func idAAD(r appRow) *string { s := fmt.Sprint(r.ID); return &s }
func noAAD(appRow) *string   { return nil }
func tenantAAD(r appRow) *string {
	s := fmt.Sprintf("%s:%d", r.Tenant, r.ID)
	return &s
}

func foreignJob(t *testing.T, mode, runID string, ds *appDataset, targetKEK string) *pipeline.Job {
	root := t.TempDir()
	j := &pipeline.Job{Mode: mode, RunID: runID,
		Source: pipeline.Side{Data: ds.dir, KEK: env.KEK("source", "kek-aes"), Format: "aes-gcm", FormatOptions: ds.keyOpts},
		Target: pipeline.Side{KEK: targetKEK, Data: filepath.Join(root, "data")},
		Ledger: filepath.Join(root, "ledger"), Columns: pipeline.Columns{Encrypted: []string{"email"}}, Workers: 2}
	if mode == schemas.ModeReencrypt {
		j.Target.DEKs = filepath.Join(root, "deks")
	}
	j.Defaults()
	return j
}

func TestForeignLockboxAndPython(t *testing.T) {
	lockboxOpts := map[string]string{"encoding": "base64", "aad": "{id}", "keys": "column", "key_column": "wrapped_key", "key_encoding": "base64"}
	pycaOpts := map[string]string{"encoding": "hex", "layout": "ciphertext,tag,nonce", "keys": "column", "key_column": "wrapped_key", "key_encoding": "base64"}
	goOpts := map[string]string{"aad": "{tenant}:{id}", "keys": "column", "key_column": "wrapped_key", "key_encoding": "base64"}
	for _, tc := range []struct {
		name, interp, script string
		keyLen               int
		opts                 map[string]string
		aad                  func(appRow) *string
	}{
		{"go-app", "", "", 32, goOpts, tenantAAD},
		{"lockbox", "/usr/bin/ruby", "lockbox_cells.rb", 32, lockboxOpts, idAAD},
		{"pyca", "/usr/bin/python3", "pyca_cells.py", 16, pycaOpts, noAAD},
		// Python's cells bound to their record id (AES-256).
		{"pyca-aad-id", "/usr/bin/python3", "pyca_cells.py", 32, withOpt(pycaOpts, "aad", "{id}"), idAAD},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var tool cellCodec = goApp{}
			if tc.script != "" {
				tool = startCellTool(t, tc.interp, tc.script)
			}
			ds := writeAppDataset(t, tool, env.KEK("source", "kek-aes"), tc.keyLen, 2, 60, 3, tc.opts, tc.aad)

			t.Run("rewrap", func(t *testing.T) {
				j := foreignJob(t, schemas.ModeRewrap, "rw-"+tc.name, ds, env.KEK("target", "kek-aes"))
				m := runJob(t, j)
				if m.Status != "succeeded" || m.Totals.RecordsFailed != 0 || m.Totals.RecordsMigrated != 60 {
					t.Fatalf("manifest %+v", m)
				}
				// The library reads the rewrapped dataset with keys the target unwraps.
				readBack(t, tool, ds, j.Target.Data, j.Target.KEK)
				checkOnlyKeyColumnChanged(t, ds.dir, j.Target.Data)
				// rekey verify reads it too: every wrapped key unwraps with
				// the target KEK and opens its record's cells.
				if rep := runVerify(t, j.VerifySpec("")); !rep.OK || rep.Totals.Records != 60 {
					t.Fatalf("rekey verify of the rewrapped key column: %+v", rep)
				}
			})
			t.Run("reencrypt-to-rekey-v1", func(t *testing.T) {
				j := foreignJob(t, schemas.ModeReencrypt, "re-"+tc.name, ds, env.KEK("target", "kek-aes"))
				j.Columns.DEKID = "dek_id"
				m := runJob(t, j)
				if m.Status != "succeeded" || m.Totals.RecordsFailed != 0 || m.Totals.RecordsMigrated != 60 {
					t.Fatalf("manifest %+v", m)
				}
				rep := runVerify(t, j.VerifySpec(""))
				if !rep.OK || rep.Totals.Records != 60 {
					t.Fatalf("rekey verify of the re-encrypted dataset: %+v", rep)
				}
			})
		})
	}
}

// checkOnlyKeyColumnChanged: a rewrap leaves every column but the wrapped
// key as it was, record for record.
func checkOnlyKeyColumnChanged(t *testing.T, src, dst string) {
	t.Helper()
	read := func(dir string) map[int64]appRow {
		out := map[int64]appRow{}
		files, _ := filepath.Glob(filepath.Join(dir, "*.parquet"))
		sort.Strings(files)
		for _, f := range files {
			rows, err := parquet.ReadFile[appRow](f)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range rows {
				out[r.ID] = r
			}
		}
		return out
	}
	a, b := read(src), read(dst)
	if len(a) != len(b) {
		t.Fatalf("%d records in, %d out", len(a), len(b))
	}
	for id, r := range a {
		o := b[id]
		if o.Email != r.Email || o.Tenant != r.Tenant {
			t.Fatalf("record %d: a column other than wrapped_key changed", id)
		}
		if o.WrappedKey == r.WrappedKey {
			t.Fatalf("record %d: wrapped key not rewrapped", id)
		}
	}
}

// withOpt is opts with k set to v (opts is not changed).
func withOpt(opts map[string]string, k, v string) map[string]string {
	o := maps.Clone(opts)
	o[k] = v
	return o
}
