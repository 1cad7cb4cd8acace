package transforms

import (
	"bytes"
	"context"
	"fmt"

	"rekey/providers/storage"
	"rekey/schemas"
)

// keptDEKs reads the fresh DEKs an earlier attempt of a mint unit committed
// to its target DEK table file, by new dek_id. A retried unit (--resume
// after failures) mints only the DEKs that are not there: records already
// committed under the kept DEKs must stay readable, and a new DEK under the
// same new dek_id would orphan them.
func keptDEKs(ctx context.Context, l DEKLayout, dstPath string) (map[string]schemas.DEKRow, error) {
	ok, err := storage.Exists(ctx, dstPath)
	if err != nil {
		return nil, fmt.Errorf("resume: %w", err)
	}
	if !ok {
		return nil, nil // the earlier attempt failed as a whole file
	}
	kept := map[string]schemas.DEKRow{}
	err = readDEKRowsIn(ctx, l, dstPath, 4096, func(rows []schemas.DEKRow) error {
		for _, r := range rows {
			r.Wrapped = bytes.Clone(r.Wrapped)
			r.KCV = bytes.Clone(r.KCV)
			kept[r.DEKID] = r
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("resume: read the DEKs of the earlier attempt %s: %w", dstPath, err)
	}
	return kept, nil
}
