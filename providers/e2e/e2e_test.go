// Package e2e runs the real rekey pipeline across object stores: a
// reencrypt from oss:// to s3://, a verify of its output, a rewrap on
// s3:// and a verify of that. OSS is the gofakes3-backed fake (no OSS
// server runs locally); S3 is versitygw, which checks SigV4.
package e2e_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"testing"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/testing/ptest"

	_ "rekey/hsmio"
	"rekey/hsmio/softhsm"
	"rekey/pipeline"
	"rekey/providers/internal/testserver"
	_ "rekey/providers/local"
	_ "rekey/providers/oss"
	_ "rekey/providers/s3"
	"rekey/providers/storage"
	"rekey/schemas"
	"rekey/transforms"
	"rekey/transforms/ledger"
)

var env *softhsm.TestEnv

func TestMain(m *testing.M) {
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	os.Exit(softhsm.Main(m, &env, func() int { return ptest.MainRetWithDefault(m, "direct") }))
}

func readJSON[T any](t *testing.T, loc string) *T {
	t.Helper()
	f, err := storage.Open(context.Background(), loc)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.NewSectionReader(f, 0, f.Size()))
	if err != nil {
		t.Fatal(err)
	}
	var v T
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("%s: %v", loc, err)
	}
	return &v
}

func count(t *testing.T, loc string) int {
	t.Helper()
	files, err := storage.List(context.Background(), loc)
	if err != nil {
		t.Fatal(err)
	}
	return len(files)
}

func verify(t *testing.T, data, deks, kek, report string, wantRecords int64) {
	t.Helper()
	spec := transforms.VerifySpec{TargetData: data, TargetDEKs: deks, TargetKEK: kek, Report: report,
		Encrypted: []string{"payload"}, Workers: 2}
	j := &pipeline.Job{Mode: schemas.ModeRewrap}
	j.Defaults()
	spec.DEKColumn, spec.IDColumn, spec.CacheSize, spec.MaxCellBytes = j.Columns.DEKID, j.Columns.RecordID, j.CacheSize, j.MaxCell
	ptest.BuildAndRun(t, func(s beam.Scope) { pipeline.BuildVerify(s, spec) })
	rep := readJSON[transforms.VerifyReport](t, report)
	if rep.Totals.Failed != 0 || rep.Totals.Records != wantRecords {
		t.Fatalf("verify %s: %+v, first failures %+v", data, rep.Totals, rep.Failures)
	}
}

// TestCrossStore: a few hundred objects from OSS to S3 and back through
// the whole pipeline. Stores are configured the way users do it, from
// the environment.
func TestCrossStore(t *testing.T) {
	ossSrv := testserver.OSSFake(t, "src-oss")
	s3Srv := testserver.Versitygw(t)
	s3Srv.CreateBucket(t, "dst-s3")
	t.Setenv("OSS_ACCESS_KEY_ID", "LTAIe2e")
	t.Setenv("OSS_ACCESS_KEY_SECRET", "e2e-oss-secret")
	t.Setenv("OSS_ENDPOINT", ossSrv.Endpoint)
	t.Setenv("OSS_REGION", "cn-hangzhou")
	t.Setenv("REKEY_OSS_PATH_STYLE", "1")
	t.Setenv("AWS_ACCESS_KEY_ID", s3Srv.Access)
	t.Setenv("AWS_SECRET_ACCESS_KEY", s3Srv.Secret)
	t.Setenv("AWS_ENDPOINT_URL_S3", s3Srv.Endpoint)
	t.Setenv("AWS_REGION", "us-east-1")
	t.Setenv("REKEY_S3_PATH_STYLE", "1")
	t.Setenv("AWS_CONFIG_FILE", os.DevNull)
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", os.DevNull)

	const files, records = 240, 4
	gen := transforms.GenSpec{Data: "oss://src-oss/tenant data/records", DEKs: "oss://src-oss/tenant data/deks",
		KEK: env.KEK("source", "kek-aes"), Wrap: "aes-gcm", Files: files, Records: records, NumDEKs: 30,
		RecordSize: 200, Seed: 7, Encrypted: []string{"payload"}, RowGroup: 3, Workers: 2}
	ptest.BuildAndRun(t, func(s beam.Scope) { pipeline.BuildGen(s, gen) })
	if n := count(t, gen.Data); n != files {
		t.Fatalf("generated %d files on OSS, want %d", n, files)
	}

	re := &pipeline.Job{Mode: schemas.ModeReencrypt, RunID: "cross1",
		Source: pipeline.Side{Data: gen.Data, DEKs: gen.DEKs, KEK: gen.KEK},
		Target: pipeline.Side{Data: "s3://dst-s3/migrated/data", DEKs: "s3://dst-s3/migrated/deks", KEK: env.KEK("target", "kek-rsa"), Wrap: "rsa-oaep-sha1"},
		Ledger: "s3://dst-s3/ledger", Columns: pipeline.Columns{Encrypted: []string{"payload"}}, Workers: 2}
	re.Defaults()
	if err := re.Validate(); err != nil {
		t.Fatal(err)
	}
	ptest.BuildAndRun(t, func(s beam.Scope) { pipeline.Build(s, re.Spec()) })
	m := readJSON[schemas.Manifest](t, ledger.ManifestPath(re.Ledger, re.RunID))
	if m.Status != "succeeded" || m.Totals.RecordsMigrated != files*records || m.Totals.Failed != 0 {
		t.Fatalf("reencrypt manifest: %s %+v %+v", m.Status, m.Totals, m.Failures)
	}
	if n := count(t, re.Target.Data); n != files {
		t.Fatalf("%d files on S3 after reencrypt, want %d", n, files)
	}
	verify(t, re.Target.Data, re.Target.DEKs, re.Target.KEK, "s3://dst-s3/reports/reencrypt.json", files*records)

	rw := &pipeline.Job{Mode: schemas.ModeRewrap, RunID: "rewrap1",
		Source: pipeline.Side{DEKs: re.Target.DEKs, KEK: re.Target.KEK},
		Target: pipeline.Side{DEKs: "s3://dst-s3/rewrapped/deks", KEK: env.KEK("target", "kek-aes"), Wrap: "aes-kwp"},
		Ledger: "s3://dst-s3/ledger", Workers: 2}
	rw.Defaults()
	if err := rw.Validate(); err != nil {
		t.Fatal(err)
	}
	ptest.BuildAndRun(t, func(s beam.Scope) { pipeline.Build(s, rw.Spec()) })
	m = readJSON[schemas.Manifest](t, ledger.ManifestPath(rw.Ledger, rw.RunID))
	if m.Status != "succeeded" || m.Totals.DEKsMigrated == 0 || m.Totals.Failed != 0 {
		t.Fatalf("rewrap manifest: %s %+v %+v", m.Status, m.Totals, m.Failures)
	}
	verify(t, re.Target.Data, rw.Target.DEKs, rw.Target.KEK, "s3://dst-s3/reports/rewrap.json", files*records)
}
