package pipeline_test

import (
	"bytes"
	"context"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ThalesGroup/crypto11"
	"github.com/parquet-go/parquet-go"
	"github.com/tink-crypto/tink-go-awskms/v3/integration/awskms"
	"github.com/tink-crypto/tink-go/v2/aead"
	"github.com/tink-crypto/tink-go/v2/core/registry"
	"github.com/tink-crypto/tink-go/v2/keyset"
	tinkpb "github.com/tink-crypto/tink-go/v2/proto/tink_go_proto"
	"github.com/tink-crypto/tink-go/v2/tink"

	"rekey/hsmio/softhsm"
	"rekey/pipeline"
	"rekey/providers/awskms/localkms"
	"rekey/providers/keys"
	"rekey/schemas"
	"rekey/transforms"
	"rekey/transforms/ledger"
)

// Issue 13, format 1: data written by tink-go's KMS envelope AEAD. Tink
// itself writes the input and reads the output; the remote AEAD is what an
// application holding its KEK in an HSM writes (crypto11's AES-GCM:
// nonce, ciphertext, tag; no associated data, as Tink asks for), or AWS KMS
// through tink-go-awskms on local-kms.

// tinkRow is the application's table: the email column is Tink's.
type tinkRow struct {
	ID     int64  `parquet:"id"`
	Tenant string `parquet:"tenant"`
	Email  []byte `parquet:"email,optional"`
}

// crypto11AEAD is an application's Tink remote AEAD on a PKCS#11 AES key.
type crypto11AEAD struct {
	ctx *crypto11.Context
	key *crypto11.SecretKey
}

func newP11AEAD(t *testing.T, token, pin, label string) tink.AEAD {
	t.Helper()
	c, err := crypto11.Configure(&crypto11.Config{Path: softhsm.Module, TokenLabel: token, Pin: pin, GCMIVLength: 12})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	k, err := c.FindKey(nil, []byte(label))
	if err != nil || k == nil {
		t.Fatalf("find %s/%s: %v", token, label, err)
	}
	return &crypto11AEAD{ctx: c, key: k}
}

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
		return nil, fmt.Errorf("short ciphertext")
	}
	return g.Open(nil, ct[:12], ct[12:], aad)
}

// tinkDataset is what the application wrote.
type tinkDataset struct {
	dir   string
	plain map[int64]string
	hash  string // of every source file, to show the source untouched
}

// writeTinkDataset has envelope (a Tink AEAD whose cells are KMS envelopes)
// encrypt records 1..n with the tenant as associated data; every 10th
// record has a null email.
func writeTinkDataset(t *testing.T, envelope tink.AEAD, files, n int) *tinkDataset {
	t.Helper()
	ds := &tinkDataset{dir: filepath.Join(t.TempDir(), "app"), plain: map[int64]string{}}
	if err := os.MkdirAll(ds.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	id := int64(0)
	for f := 0; f < files; f++ {
		var rows []tinkRow
		for i := 0; i < n/files; i++ {
			id++
			r := tinkRow{ID: id, Tenant: fmt.Sprintf("tenant-%d", id%3)}
			if id%10 != 0 {
				pt := fmt.Sprintf("user%d@example.com %s", id, strings.Repeat("y", int(id%9)))
				ct, err := envelope.Encrypt([]byte(pt), []byte(r.Tenant))
				if err != nil {
					t.Fatal(err)
				}
				r.Email, ds.plain[id] = ct, pt
			}
			rows = append(rows, r)
		}
		if err := parquet.WriteFile(filepath.Join(ds.dir, fmt.Sprintf("part-%d.parquet", f)), rows); err != nil {
			t.Fatal(err)
		}
	}
	ds.hash = dirHash(t, ds.dir)
	return ds
}

func dirHash(t *testing.T, dir string) string {
	t.Helper()
	h := sha256.New()
	files, _ := filepath.Glob(filepath.Join(dir, "*.parquet"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		h.Write(b)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

// readTinkBack has Tink decrypt every email cell under data with envelope
// (and expects every one to fail with wrong, when set).
func readTinkBack(t *testing.T, ds *tinkDataset, data string, envelope, wrong tink.AEAD) {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(data, "*.parquet"))
	seen := 0
	for _, f := range files {
		rows, err := parquet.ReadFile[tinkRow](f)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rows {
			if r.Email == nil {
				if _, ok := ds.plain[r.ID]; ok {
					t.Fatalf("record %d: email became null", r.ID)
				}
				seen++
				continue
			}
			pt, err := envelope.Decrypt(r.Email, []byte(r.Tenant))
			if err != nil || string(pt) != ds.plain[r.ID] {
				t.Fatalf("record %d: Tink reads %q (%v), want %q", r.ID, pt, err, ds.plain[r.ID])
			}
			if wrong != nil {
				if _, err := wrong.Decrypt(r.Email, []byte(r.Tenant)); err == nil {
					t.Fatalf("record %d: the old KEK still opens the migrated cell", r.ID)
				}
			}
			seen++
		}
	}
	if want := countRows(ds); seen != want {
		t.Fatalf("%d records read back, %d written", seen, want)
	}
}

func countRows(ds *tinkDataset) int {
	n := 0
	files, _ := filepath.Glob(filepath.Join(ds.dir, "*.parquet"))
	for _, f := range files {
		rows, _ := parquet.ReadFile[tinkRow](f)
		n += len(rows)
	}
	return n
}

func tinkJob(t *testing.T, mode, runID string, ds *tinkDataset, srcKEK, dstKEK string, opts map[string]string) *pipeline.Job {
	root := t.TempDir()
	j := &pipeline.Job{Mode: mode, RunID: runID,
		Source: pipeline.Side{Data: ds.dir, KEK: srcKEK, Format: "tink-envelope", FormatOptions: opts},
		Target: pipeline.Side{KEK: dstKEK, Data: filepath.Join(root, "data")},
		Ledger: filepath.Join(root, "ledger"), Columns: pipeline.Columns{Encrypted: []string{"email"}}, Workers: 2}
	if mode == schemas.ModeReencrypt {
		j.Target.Format, j.Target.FormatOptions = "tink-envelope", opts
	}
	j.Defaults()
	return j
}

// The payload of every cell is untouched by a rewrap: only the wrapped
// DEK in front of it changed.
func checkPayloadsKept(t *testing.T, src, dst string, prefix int) {
	t.Helper()
	read := func(dir string) map[int64][]byte {
		out := map[int64][]byte{}
		files, _ := filepath.Glob(filepath.Join(dir, "*.parquet"))
		for _, f := range files {
			rows, err := parquet.ReadFile[tinkRow](f)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range rows {
				out[r.ID] = r.Email
			}
		}
		return out
	}
	a, b := read(src), read(dst)
	for id, cell := range a {
		if cell == nil {
			continue
		}
		c, d := cell[prefix:], b[id][prefix:]
		n := int(c[0])<<24 | int(c[1])<<16 | int(c[2])<<8 | int(c[3])
		m := int(d[0])<<24 | int(d[1])<<16 | int(d[2])<<8 | int(d[3])
		if !bytes.Equal(c[4+n:], d[4+m:]) || !bytes.Equal(cell[:prefix], b[id][:prefix]) {
			t.Fatalf("record %d: the payload changed in a rewrap", id)
		}
	}
}

func TestTinkEnvelopePKCS11(t *testing.T) {
	oldKEK := newP11AEAD(t, "source", "src-pin-1234", "kek-aes")
	newKEK := newP11AEAD(t, "target", "dst-pin-5678", "kek-aes")
	oldEnv := aead.NewKMSEnvelopeAEAD2(aead.AES256GCMKeyTemplate(), oldKEK)
	newEnv := aead.NewKMSEnvelopeAEAD2(aead.AES256GCMKeyTemplate(), newKEK)
	ds := writeTinkDataset(t, oldEnv, 2, 60)
	opts := map[string]string{"aad": "{tenant}"}

	t.Run("plan", func(t *testing.T) {
		j := tinkJob(t, schemas.ModeRewrap, "plan", ds, env.KEK("source", "kek-aes"), env.KEK("target", "kek-aes"), opts)
		r := pipeline.Plan(context.Background(), j, true)
		if r.Failed() {
			t.Fatalf("plan refused: %+v", r.Checks)
		}
		// One DEK per cell: the estimate counts calls per record.
		if r.DEKs != 60 || !strings.Contains(r.HSMOpsNote, "every encrypted cell carries its own DEK") || r.HSMOps < 3*60 {
			t.Fatalf("plan estimate: %d DEKs, %d calls, %q", r.DEKs, r.HSMOps, r.HSMOpsNote)
		}
	})
	t.Run("rewrap", func(t *testing.T) {
		j := tinkJob(t, schemas.ModeRewrap, "tink-rw", ds, env.KEK("source", "kek-aes"), env.KEK("target", "kek-aes"), opts)
		m := runJob(t, j)
		if m.Status != "succeeded" || m.Totals.RecordsFailed != 0 || m.Totals.RecordsMigrated != 60 {
			t.Fatalf("manifest %s %+v", m.Status, m.Totals)
		}
		readTinkBack(t, ds, j.Target.Data, newEnv, oldEnv)
		checkPayloadsKept(t, ds.dir, j.Target.Data, 0)
		// rekey verify unwraps every cell's DEK with the target KEK and
		// opens the cell; with the source KEK every record fails.
		if rep := runVerify(t, j.VerifySpec("")); !rep.OK || rep.Counts.Records.Migrated != 60 {
			t.Fatalf("verify: %+v %+v", rep.Counts, rep.Failures)
		}
		wrong := j.VerifySpec("")
		wrong.TargetKEK = env.KEK("source", "kek-aes")
		if rep := runVerify(t, wrong); rep.OK || rep.Counts.Records.Failed == 0 {
			t.Fatalf("verify with the old KEK: %+v", rep.Counts)
		}
		checkLedger(t, j, map[string]int{"record/migrated": 60})
		if dirHash(t, ds.dir) != ds.hash {
			t.Fatal("the source changed")
		}
	})
	t.Run("reencrypt", func(t *testing.T) {
		j := tinkJob(t, schemas.ModeReencrypt, "tink-re", ds, env.KEK("source", "kek-aes"), env.KEK("target", "kek-aes"), opts)
		m := runJob(t, j)
		if m.Status != "succeeded" || m.Totals.RecordsFailed != 0 || m.Totals.RecordsMigrated != 60 {
			t.Fatalf("manifest %s %+v", m.Status, m.Totals)
		}
		readTinkBack(t, ds, j.Target.Data, newEnv, oldEnv)
		checkLedger(t, j, map[string]int{"record/migrated": 60})
		if rep := runVerify(t, j.VerifySpec("")); !rep.OK || rep.Counts.Records.Migrated != 60 {
			t.Fatalf("verify: %+v %+v", rep.Counts, rep.Failures)
		}
		rows, err := ledger.Read(context.Background(), j.Ledger, j.RunID)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rows {
			if r.Proof != schemas.ProofCell || !strings.HasPrefix(r.Checksum, schemas.RecordChecksumPrefix) && r.Checksum != "" {
				t.Fatalf("ledger row %+v", r)
			}
		}
	})
}

// Into another format: Tink cells re-encrypted into rekey-v1, one fresh
// DEK per record file in a DEK table and a dek_id column added; rekey
// verify compares nothing but decrypts every record with that table.
func TestTinkEnvelopeIntoRekeyV1(t *testing.T) {
	oldKEK := newP11AEAD(t, "source", "src-pin-1234", "kek-aes")
	ds := writeTinkDataset(t, aead.NewKMSEnvelopeAEAD2(aead.AES256GCMKeyTemplate(), oldKEK), 2, 40)
	j := tinkJob(t, schemas.ModeReencrypt, "tink-v1", ds, env.KEK("source", "kek-aes"), env.KEK("target", "kek-aes"), map[string]string{"aad": "{tenant}"})
	j.Target.Format, j.Target.FormatOptions = "rekey-v1", nil
	j.Target.DEKs = filepath.Join(filepath.Dir(j.Target.Data), "deks")
	m := runJob(t, j)
	if m.Status != "succeeded" || m.Totals.RecordsMigrated != 40 || m.Totals.DEKsMigrated != 2 {
		t.Fatalf("manifest %s %+v %+v", m.Status, m.Totals, m.Failures)
	}
	rep := runVerify(t, j.VerifySpec(""))
	if !rep.OK || rep.Counts.Records.Migrated != 40 || rep.Counts.DEKs.Migrated != 2 {
		t.Fatalf("verify: %+v %+v", rep.Counts, rep.Failures)
	}
	// The plaintexts are the application's, read back through rekey-v1
	// (docs/FORMAT.md sections 1-2) with the new DEK table.
	ctx := context.Background()
	table, err := transforms.ReadDEKTable(ctx, j.Target.DEKs)
	if err != nil {
		t.Fatal(err)
	}
	kek, err := keys.Open(ctx, j.Target.KEK, keys.Options{})
	if err != nil {
		t.Fatal(err)
	}
	aeads := map[string]cipher.AEAD{}
	for _, r := range table {
		d, err := kek.Unwrap(ctx, keys.ByID(r.DEKID), r.Wrap, r.Wrapped)
		if err != nil {
			t.Fatal(err)
		}
		aeads[r.DEKID], _ = d.AEAD()
	}
	type v1Row struct {
		ID     int64  `parquet:"id"`
		Tenant string `parquet:"tenant"`
		Email  []byte `parquet:"email,optional"`
		DEKID  string `parquet:"dek_id"`
	}
	files, _ := filepath.Glob(filepath.Join(j.Target.Data, "*.parquet"))
	seen := 0
	for _, f := range files {
		rows, err := parquet.ReadFile[v1Row](f)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rows {
			seen++
			if r.Email == nil {
				continue
			}
			aad, _ := schemas.CellAAD(nil, "email", fmt.Sprint(r.ID), r.DEKID)
			pt, err := schemas.OpenCell(nil, aeads[r.DEKID], r.Email, aad)
			if err != nil || string(pt) != ds.plain[r.ID] {
				t.Fatalf("record %d: %q, %v; want %q", r.ID, pt, err, ds.plain[r.ID])
			}
		}
	}
	if seen != 40 {
		t.Fatalf("%d records at the target, want 40", seen)
	}
	if dirHash(t, ds.dir) != ds.hash {
		t.Fatal("the source changed")
	}
}

// Bad input: each bad cell is a failed ledger row naming the record and
// the reason; every other record is migrated; the source is untouched.
func TestTinkEnvelopeBadCells(t *testing.T) {
	oldKEK := newP11AEAD(t, "source", "src-pin-1234", "kek-aes")
	otherKEK := newP11AEAD(t, "source", "src-pin-1234", "kek-other")
	newKEK := newP11AEAD(t, "target", "dst-pin-5678", "kek-aes")
	ds := writeTinkDataset(t, aead.NewKMSEnvelopeAEAD2(aead.AES256GCMKeyTemplate(), oldKEK), 1, 20)
	ctr := aead.NewKMSEnvelopeAEAD2(aead.AES128CTRHMACSHA256KeyTemplate(), oldKEK)
	other := aead.NewKMSEnvelopeAEAD2(aead.AES256GCMKeyTemplate(), otherKEK)
	file := filepath.Join(ds.dir, "part-0.parquet")
	rows, err := parquet.ReadFile[tinkRow](file)
	if err != nil {
		t.Fatal(err)
	}
	bad := map[int64]string{}
	for i := range rows {
		r := &rows[i]
		switch r.ID {
		case 3: // a DEK template rekey does not take
			r.Email, _ = ctr.Encrypt([]byte("ctr"), []byte(r.Tenant))
			bad[r.ID] = "AES-CTR-HMAC"
		case 4: // truncated
			r.Email = r.Email[:20]
			bad[r.ID] = "not a Tink KMS envelope cell"
		case 5: // a DEK wrapped by another KEK
			r.Email, _ = other.Encrypt([]byte("other"), []byte(r.Tenant))
			bad[r.ID] = "unwrap its DEK"
		case 6: // the payload changed
			r.Email[len(r.Email)-1] ^= 1
			bad[r.ID] = "does not open the cell"
		}
	}
	if err := parquet.WriteFile(file, rows); err != nil {
		t.Fatal(err)
	}
	for id := range bad {
		delete(ds.plain, id)
	}
	ds.hash = dirHash(t, ds.dir)
	j := tinkJob(t, schemas.ModeRewrap, "tink-bad", ds, env.KEK("source", "kek-aes"), env.KEK("target", "kek-aes"), map[string]string{"aad": "{tenant}"})
	m := runJob(t, j)
	if m.Totals.RecordsFailed != int64(len(bad)) || m.Totals.RecordsMigrated != 20-int64(len(bad)) || m.Status == "succeeded" {
		t.Fatalf("manifest %s %+v", m.Status, m.Totals)
	}
	lrows, err := ledger.Read(context.Background(), j.Ledger, j.RunID)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range lrows {
		if r.Status != schemas.StatusFailed {
			continue
		}
		var id int64
		fmt.Sscan(r.RecordID, &id)
		if want := bad[id]; want == "" || !strings.Contains(r.Error, want) || !strings.Contains(r.Error, fmt.Sprintf("record %q column \"email\"", r.RecordID)) {
			t.Fatalf("record %s failed with %q, want it to name the record, the column and %q", r.RecordID, r.Error, want)
		}
	}
	if dirHash(t, ds.dir) != ds.hash {
		t.Fatal("the source changed")
	}
	// The failed records are left out; the others read back.
	out, err := parquet.ReadFile[tinkRow](filepath.Join(j.Target.Data, "part-0.parquet"))
	if err != nil {
		t.Fatal(err)
	}
	env := aead.NewKMSEnvelopeAEAD2(aead.AES256GCMKeyTemplate(), newKEK)
	for _, r := range out {
		if bad[r.ID] != "" {
			t.Fatalf("failed record %d is in the output", r.ID)
		}
		if r.Email != nil {
			if pt, err := env.Decrypt(r.Email, []byte(r.Tenant)); err != nil || string(pt) != ds.plain[r.ID] {
				t.Fatalf("record %d: %q, %v", r.ID, pt, err)
			}
		}
	}
	// Jobs rekey cannot run are refused before anything is touched,
	// naming the field and what to do.
	for _, c := range []struct {
		name string
		edit func(j *pipeline.Job)
		want string
	}{
		{"a DEK template rekey does not take", func(j *pipeline.Job) {
			j.Source.FormatOptions = map[string]string{"dek_template": "XCHACHA20_POLY1305"}
			j.Target.FormatOptions = j.Source.FormatOptions
		}, "XCHACHA20_POLY1305 is not supported"},
		{"a source DEK table", func(j *pipeline.Job) { j.Source.DEKs = "/x" }, "remove source.deks"},
		{"reencrypt into rekey-v1 without target.deks", func(j *pipeline.Job) {
			j.Mode, j.Target.Format, j.Target.FormatOptions = schemas.ModeReencrypt, "rekey-v1", nil
		}, "target.deks: missing"},
		{"reencrypt into keys in a column", func(j *pipeline.Job) {
			j.Mode, j.Target.Format = schemas.ModeReencrypt, "aes-gcm"
			j.Target.FormatOptions = map[string]string{"keys": "column", "key_column": "k"}
		}, "not supported yet"},
		{"reencrypt writing a prefix without key_id", func(j *pipeline.Job) {
			j.Mode, j.Target.Format, j.Target.FormatOptions = schemas.ModeReencrypt, "tink-envelope", map[string]string{"prefix": "tink"}
		}, "key_id: missing"},
		{"aes-gcm into tink-envelope", func(j *pipeline.Job) {
			j.Mode, j.Source.Format, j.Source.FormatOptions = schemas.ModeReencrypt, "aes-gcm", nil
			j.Target.Format, j.Target.FormatOptions = "tink-envelope", nil
		}, "not supported yet"},
	} {
		jj := *j
		jj.Source, jj.Target = j.Source, j.Target
		c.edit(&jj)
		if err := jj.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: validate = %v, want %q", c.name, err, c.want)
		}
	}
}

// tinkKMSClient hands tink-go the remote AEADs of a keyset's KEK URIs.
type tinkKMSClient struct {
	prefix string
	aeads  map[string]tink.AEAD
}

func (c *tinkKMSClient) Supported(uri string) bool { return strings.HasPrefix(uri, c.prefix) }
func (c *tinkKMSClient) GetAEAD(uri string) (tink.AEAD, error) {
	if a := c.aeads[uri]; a != nil {
		return a, nil
	}
	return nil, fmt.Errorf("no key %s", uri)
}

// AWS KMS through tink-go-awskms (its encryption context is empty: Tink
// encrypts DEKs without associated data), in a keyset with Tink's 5-byte
// output prefix; rewrap to another KMS key, and reencrypt.
func TestTinkEnvelopeAWSKMS(t *testing.T) {
	kms := localkms.Start(t)
	ctx := context.Background()
	uri := func(name string) string { return "aws-kms://" + kms.KeyARN(name) }
	client, err := awskms.NewClientWithOptions(ctx, "aws-kms://", awskms.WithKMS(kms.Client()))
	if err != nil {
		t.Fatal(err)
	}
	registry.RegisterKMSClient(client)
	tmpl, err := aead.CreateKMSEnvelopeAEADKeyTemplate(uri(localkms.Key1), aead.AES256GCMKeyTemplate())
	if err != nil {
		t.Fatal(err)
	}
	tmpl.OutputPrefixType = tinkpb.OutputPrefixType_TINK
	h, err := keyset.NewHandle(tmpl)
	if err != nil {
		t.Fatal(err)
	}
	app, err := aead.New(h)
	if err != nil {
		t.Fatal(err)
	}
	ds := writeTinkDataset(t, app, 2, 40)
	keyID := fmt.Sprint(h.KeysetInfo().GetPrimaryKeyId())
	opts := map[string]string{"aad": "{tenant}", "prefix": "tink", "key_id": keyID}
	oldKEK, _ := client.GetAEAD(uri(localkms.Key1))
	newKEK, _ := client.GetAEAD(uri(localkms.Key2))
	// The application reads the migrated data as it always did, its
	// keyset now naming the new KMS key; the raw envelope after the 5-byte
	// prefix shows which KEK wrapped each DEK.
	unprefixed := func(a tink.AEAD) tink.AEAD {
		return prefixStripper{aead.NewKMSEnvelopeAEAD2(aead.AES256GCMKeyTemplate(), a)}
	}
	for _, mode := range []string{schemas.ModeRewrap, schemas.ModeReencrypt} {
		t.Run(mode, func(t *testing.T) {
			j := tinkJob(t, mode, "tink-aws-"+mode, ds, kms.KeyURI(localkms.Key1), kms.KeyURI(localkms.Key2), opts)
			m := runJob(t, j)
			if m.Status != "succeeded" || m.Totals.RecordsMigrated != 40 {
				t.Fatalf("manifest %s %+v", m.Status, m.Totals)
			}
			readTinkBack(t, ds, j.Target.Data, unprefixed(newKEK), unprefixed(oldKEK))
			if mode == schemas.ModeRewrap {
				checkPayloadsKept(t, ds.dir, j.Target.Data, 5)
			}
		})
	}
}

// prefixStripper reads cells with Tink's 5-byte output prefix through a
// raw envelope AEAD.
type prefixStripper struct{ tink.AEAD }

func (p prefixStripper) Decrypt(ct, aad []byte) ([]byte, error) {
	if len(ct) < 5 || ct[0] != 0x01 {
		return nil, fmt.Errorf("no TINK prefix")
	}
	return p.AEAD.Decrypt(ct[5:], aad)
}
