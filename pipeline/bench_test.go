package pipeline_test

import (
	"fmt"
	"path/filepath"
	"testing"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/testing/ptest"

	"rekey/pipeline"
	"rekey/schemas"
	"rekey/transforms"
)

// BenchmarkReencrypt measures a whole reencrypt run on the direct runner
// (make bench reports it against the raw limits; see BENCHMARKS.md).
func BenchmarkReencrypt(b *testing.B) {
	for _, size := range []int{256, 4096, 65536} {
		b.Run(fmt.Sprintf("cell=%d", size), func(b *testing.B) {
			records := (64 << 20) / size
			root := b.TempDir()
			g := transforms.GenSpec{Data: filepath.Join(root, "src", "data"), DEKs: filepath.Join(root, "src", "deks"),
				KEK: env.KEK("source", "kek-aes"), Files: 4, Records: records / 4, NumDEKs: 64, RecordSize: size, Seed: 1,
				Encrypted: []string{"payload"}, RowGroup: 4096, Workers: 2}
			p, s := beam.NewPipelineWithRoot()
			pipeline.BuildGen(s, g)
			if err := ptest.Run(p); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(records * size))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				id := fmt.Sprintf("b%d", i)
				j := &pipeline.Job{Mode: schemas.ModeReencrypt, RunID: id,
					Source: pipeline.Side{Data: g.Data, DEKs: g.DEKs, KEK: g.KEK},
					Target: pipeline.Side{Data: filepath.Join(root, id, "data"), DEKs: filepath.Join(root, id, "deks"), KEK: env.KEK("target", "kek-aes")},
					Ledger: filepath.Join(root, "ledger")}
				j.Defaults()
				p, s := beam.NewPipelineWithRoot()
				pipeline.Build(s, j.Spec())
				if err := ptest.Run(p); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
