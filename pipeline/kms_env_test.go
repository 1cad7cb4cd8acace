package pipeline_test

// Fixtures of the KMS custodians for the pipeline's end-to-end tests (issue
// 12): local-kms (a real AWS KMS emulator) and the FAKES of IBM Key
// Protect / HPCS (kpfake) and Alibaba Cloud KMS (kmsfake), which cannot
// run on one machine. The providers register their schemes when imported.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/testing/ptest"
	"github.com/parquet-go/parquet-go"

	_ "rekey/providers/alikms"
	"rekey/providers/alikms/kmsfake"
	_ "rekey/providers/awskms"
	_ "rekey/providers/ibmkp"
	"rekey/providers/ibmkp/kpfake"
	"rekey/providers/storage"

	"rekey/pipeline"
	"rekey/schemas"
	"rekey/transforms"
	"rekey/transforms/ledger"
)

// ibmAPIKeyEnv holds the Key Protect fake's API key: references name the
// variable (apikey-source=env:...), never the key.
const ibmAPIKeyEnv = "REKEY_TEST_IBM_APIKEY"

// ibmRunbook is the HPCS runbook's two instances on one Key Protect fake:
// beta (the old crypto unit) and production, one root key each.
type ibmRunbook struct {
	srv              *kpfake.Server
	beta, prod       string
	betaKey, prodKey string
}

func newIBMRunbook(t *testing.T) *ibmRunbook {
	t.Helper()
	apiKey := "kpfake-apikey-" + randomHex(16)
	t.Setenv(ibmAPIKeyEnv, apiKey)
	e := &ibmRunbook{srv: kpfake.New(t), beta: "beta-0a1b2c3d", prod: "prod-4e5f6a7b"}
	e.srv.AddAPIKey(apiKey, e.beta, e.prod)
	e.betaKey, e.prodKey = e.srv.CreateKey(e.beta), e.srv.CreateKey(e.prod)
	return e
}

// ref is a reference to key in instance, as a job file writes it (with
// the fake's endpoint and IAM token URL instead of IBM Cloud's).
func (e *ibmRunbook) ref(instance, key string) string {
	return "ibmkp:endpoint=" + e.srv.URL + ";instance=" + instance + ";key=" + key +
		"?apikey-source=env:" + ibmAPIKeyEnv + "&iam-endpoint=" + e.srv.IAMEndpoint()
}

// aliPasswordEnv holds the instance fake's ClientKey password.
const aliPasswordEnv = "REKEY_TEST_KMS_CLIENTKEY_PASSWORD"

// aliRunbook is the Alibaba runbook's two ends: the shared gateway of the
// old region (OpenAPI, AccessKey in a credential file) and a KMS instance
// in the new one (ClientKey file, its password in the environment, the
// instance CA), both fakes.
type aliRunbook struct {
	gw                      *kmsfake.Gateway
	inst                    *kmsfake.Instance
	credFile, ckFile, caCrt string
}

func newAliRunbook(t *testing.T) *aliRunbook {
	t.Helper()
	a := &aliRunbook{gw: kmsfake.NewGateway("cn-hangzhou"), inst: kmsfake.NewInstance()}
	t.Cleanup(a.gw.Close)
	t.Cleanup(a.inst.Close)
	dir := t.TempDir()
	akID, secret := "LTAI5tRekeyE2E", randomHex(15)
	a.gw.AddAccessKey(akID, secret, "")
	a.credFile = filepath.Join(dir, "accesskey.json")
	writeFile(t, a.credFile, fmt.Sprintf(`{"AccessKeyId": %q, "AccessKeySecret": %q}`, akID, secret))
	password := randomHex(12)
	ck, err := a.inst.NewClientKey(password)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(aliPasswordEnv, password)
	a.ckFile, a.caCrt = filepath.Join(dir, "clientKey_KAAP.json"), filepath.Join(dir, "PrivateKmsCA_kst-test.pem")
	writeFile(t, a.ckFile, string(ck))
	writeFile(t, a.caCrt, string(a.inst.CACert()))
	return a
}

func (a *aliRunbook) gatewayRef(key string) string {
	return "alikms:" + key + "?region=" + a.gw.Region + "&endpoint=" + a.gw.Endpoint() + "&credential-source=file:" + a.credFile
}

func (a *aliRunbook) instanceRef(key string) string {
	return "alikms-instance:" + key + "?endpoint=" + a.inst.Endpoint() + "&client-key-source=file:" + a.ckFile +
		"&password-source=env:" + aliPasswordEnv + "&ca-source=file:" + a.caCrt
}

func writeFile(t *testing.T, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// genSharded is genDataset with the DEK table split into files of
// deksPerFile DEKs (units of a rewrap), cells in payload only.
func genSharded(t *testing.T, kek, wrap string, files, records, deks, deksPerFile int) *dataset {
	t.Helper()
	root := t.TempDir()
	g := transforms.GenSpec{Data: filepath.Join(root, "src", "data"), DEKs: filepath.Join(root, "src", "deks"), KEK: kek, Wrap: wrap,
		Files: files, Records: records, NumDEKs: deks, RecordSize: 200, Seed: 42, Encrypted: []string{"payload"}, RowGroup: 70,
		Workers: 4, DEKSPerFile: deksPerFile}
	ptest.BuildAndRun(t, func(s beam.Scope) { pipeline.BuildGen(s, g) })
	return &dataset{gen: g, root: root}
}

// wantSucceeded fails unless the run migrated every DEK (and, for a
// reencrypt, every record) with nothing failed or skipped.
func wantSucceeded(t *testing.T, m *schemas.Manifest, deks, records int64) {
	t.Helper()
	tt := m.Totals
	if m.Status != "succeeded" || tt.Failed != 0 || tt.DEKsMigrated != deks || tt.DEKsSkipped != 0 || tt.RecordsMigrated != records {
		t.Fatalf("manifest: status %s, totals %+v, first failures %+v; want %d DEKs and %d records migrated, nothing failed",
			m.Status, tt, m.Failures, deks, records)
	}
}

// wantVerified runs `rekey verify` of j against its source and requires
// OK with every record and DEK of the source migrated.
func wantVerified(t *testing.T, j *pipeline.Job, records, deks int64) *transforms.VerifyReport {
	t.Helper()
	rep := runVerify(t, verifySpec(j))
	if !rep.OK || !rep.Compared || len(rep.Failures) != 0 {
		t.Fatalf("verify of %s: ok %v, compared %v, counts %+v, failures %+v", j.RunID, rep.OK, rep.Compared, rep.Counts, rep.Failures)
	}
	wantCounts(t, "verified records", rep.Counts.Records, transforms.VerifyCounts{Source: records, Target: records, Migrated: records})
	wantCounts(t, "verified DEKs", rep.Counts.DEKs, transforms.VerifyCounts{Source: deks, Target: deks, Migrated: deks})
	return rep
}

// ledgerDEKRows returns the run's DEK rows (each unit's last attempt),
// counted by "status/path".
func ledgerDEKRows(t *testing.T, j *pipeline.Job) map[string]int {
	t.Helper()
	rows, err := ledger.Read(context.Background(), j.Ledger, j.RunID)
	if err != nil {
		t.Fatal(err)
	}
	n := map[string]int{}
	for _, r := range rows {
		if r.Unit == schemas.UnitDEK {
			n[r.Status+"/"+r.Path]++
		} else if r.Status == schemas.StatusFailed {
			n["failed "+r.Unit]++
		}
	}
	return n
}

// committedUnits checks that the run left nothing half-committed: every
// file of the target DEK table has its ledger part and every ledger part
// of a DEK table file its target file (a unit that failed as a whole file
// has a part without one, and then its one row says failed), every part's
// DEK rows are all migrated and name the file, and nothing but hidden
// temporaries is beside the committed files. It returns the committed
// units' relative names.
func committedUnits(t *testing.T, j *pipeline.Job) []string {
	t.Helper()
	ctx := context.Background()
	srcFiles, err := storage.List(ctx, j.Source.DEKs)
	if err != nil {
		t.Fatal(err)
	}
	var done []string
	for _, rel := range srcFiles {
		if !strings.HasSuffix(rel, ".parquet") {
			continue
		}
		part := ledger.PartPath(j.Ledger, j.RunID, "deks", rel)
		last, _, err := ledger.LastAttempt(ctx, part)
		if err != nil {
			t.Fatalf("ledger part of %s: %v", rel, err)
		}
		partOK := last != ""
		target := storage.Join(j.Target.DEKs, rel)
		targetOK, _ := storage.Exists(ctx, target)
		switch {
		case targetOK && !partOK:
			t.Errorf("target DEK file %s is committed without its ledger part %s", target, last)
		case partOK && !targetOK:
			rows, err := ledger.ReadPart(ctx, last)
			if err != nil || len(rows) != 1 || rows[0].Unit != schemas.UnitFile || rows[0].Status != schemas.StatusFailed {
				t.Errorf("ledger part %s is committed without its target file %s: %v %+v", last, target, err, rows)
			}
		case partOK:
			rows, err := ledger.ReadPart(ctx, last)
			if err != nil {
				t.Fatal(err)
			}
			tbl, err := parquet.ReadFile[schemas.DEKRow](target)
			if err != nil {
				t.Fatalf("committed target %s: %v", target, err)
			}
			if len(rows) != len(tbl) {
				t.Errorf("unit %s: %d ledger rows, %d target DEK rows", rel, len(rows), len(tbl))
			}
			for _, r := range rows {
				if r.Unit != schemas.UnitDEK || r.Status != schemas.StatusMigrated || r.Target != target {
					t.Errorf("unit %s: ledger row %+v", rel, r)
					break
				}
			}
			done = append(done, rel)
		}
	}
	for _, dir := range []string{j.Target.DEKs, ledger.RunDir(j.Ledger, j.RunID)} {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			n := e.Name()
			if !e.IsDir() && !strings.HasSuffix(n, ".parquet") && !strings.HasPrefix(n, ".") && !strings.HasPrefix(n, "_") {
				t.Errorf("unexpected file %s in %s", n, dir)
			}
			if strings.HasPrefix(n, ".") && strings.Contains(n, ".rekey-") {
				t.Errorf("a temporary %s was left in %s by a run that was not killed", n, dir)
			}
		}
	}
	sort.Strings(done)
	return done
}

// manifestExists reports whether the run wrote its manifest (a run that
// stopped writes none).
func manifestExists(j *pipeline.Job) bool {
	_, err := os.Stat(ledger.ManifestPath(j.Ledger, j.RunID))
	return err == nil
}

// jsonString is v as one line, for messages.
func jsonString(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
