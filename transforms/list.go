package transforms

import (
	"context"
	"strings"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/register"

	"rekey/providers/storage"
)

func init() {
	register.DoFn3x1[context.Context, []byte, func(string), error](&ListFn{})
	register.Emitter1[string]()
}

// ListFn emits the relative path of every Parquet file under Root.
type ListFn struct {
	Root string
}

// ProcessElement lists Root once per impulse.
func (f *ListFn) ProcessElement(ctx context.Context, _ []byte, emit func(string)) error {
	files, err := storage.List(ctx, f.Root)
	if err != nil {
		return err
	}
	for _, rel := range files {
		if strings.HasSuffix(rel, ".parquet") {
			emit(rel)
		}
	}
	return nil
}

// ListFiles is the composite: the Parquet files under root, as relative
// paths, redistributed so a distributed runner spreads them over workers
// (only the paths are shuffled).
func ListFiles(s beam.Scope, root string) beam.PCollection {
	s = s.Scope("ListFiles")
	files := beam.ParDo(s, &ListFn{Root: root}, beam.Impulse(s))
	return beam.Reshuffle(s, files)
}
