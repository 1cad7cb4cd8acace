package alikms

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"

	"rekey/providers/keys"
)

// Schemes, mechanisms and examples.
const (
	GatewayScheme   = "alikms"
	InstanceScheme  = "alikms-instance"
	GatewayMech     = "alikms"
	InstanceMech    = "alikms-instance"
	GatewayExample  = "alikms:alias/my-key?region=cn-hangzhou"
	InstanceExample = "alikms-instance:key-hzz62f1cb66fa42qo?endpoint=kst-hzz62f1cb66fa42qo.cryptoservice.kms.aliyuncs.com&client-key-source=file:/etc/rekey/clientKey.json&password-source=env:KMS_CLIENT_KEY_PASSWORD&ca-source=file:/etc/rekey/PrivateKmsCA.pem"
)

// Default rates (operations per second per custodian); see the package doc.
const (
	GatewayRate  = 1000
	InstanceRate = 1000
	// DefaultConcurrency: requests a worker process keeps in flight on one
	// custodian when the job sets no --workers (see keys.Scheme).
	DefaultConcurrency = 16
)

func init() {
	keys.Register(keys.Scheme{
		Name: GatewayScheme,
		Open: func(ctx context.Context, uri string, opts keys.Options) (keys.KEK, error) {
			k, err := openGateway(ctx, uri, opts)
			if err != nil {
				return nil, err // not a typed nil in a non-nil interface
			}
			return k, nil
		},
		Parse:       func(uri string) (keys.Ref, error) { return parseKeysRef(GatewayScheme, uri) },
		Mechanisms:  []string{GatewayMech},
		Example:     GatewayExample,
		Import:      "rekey/providers/alikms",
		Rate:        GatewayRate,
		Concurrency: DefaultConcurrency,
	})
	keys.Register(keys.Scheme{
		Name: InstanceScheme,
		Open: func(ctx context.Context, uri string, opts keys.Options) (keys.KEK, error) {
			k, err := openInstance(ctx, uri, opts)
			if err != nil {
				return nil, err
			}
			return k, nil
		},
		Parse:       func(uri string) (keys.Ref, error) { return parseKeysRef(InstanceScheme, uri) },
		Mechanisms:  []string{InstanceMech},
		Example:     InstanceExample,
		Import:      "rekey/providers/alikms",
		Rate:        InstanceRate,
		Concurrency: DefaultConcurrency,
	})
}

func parseKeysRef(scheme, uri string) (keys.Ref, error) {
	r, err := parseRef(scheme, uri)
	if err != nil {
		return keys.Ref{}, err
	}
	return r.keysRef(), nil
}

// Timeouts of one call. The SDKs take milliseconds, except that tea's
// dialer reads ConnectTimeout as seconds: 5000 bounds a connect by the
// read timeout either way.
var (
	readTimeoutMS    = 30000
	connectTimeoutMS = 5000
)

// guardDebug refuses to run while the Alibaba SDKs' debug logs are on:
// DEBUG=tea prints every request URL (the gateway SDK sends Encrypt's
// plaintext in the query), DEBUG=credential the credential services'
// answers (AccessKey secrets, STS tokens).
func guardDebug(what string) error {
	for _, f := range strings.Split(os.Getenv("DEBUG"), ",") {
		if f == "tea" || f == "credential" {
			return fmt.Errorf("%s: %w: DEBUG=%s turns on an Alibaba Cloud SDK log that prints data keys or credentials; unset it", what, keys.ErrModule, f)
		}
	}
	return nil
}

// call runs an SDK call, which takes no context, so that ctx still ends
// the wait; an abandoned call ends within the read timeout.
func call[T any](ctx context.Context, f func() (T, error)) (T, error) {
	var zero T
	if err := ctx.Err(); err != nil {
		return zero, err
	}
	type result struct {
		v   T
		err error
	}
	ch := make(chan result, 1)
	go func() {
		v, err := f()
		ch <- result{v, err}
	}()
	select {
	case r := <-ch:
		return r.v, r.err
	case <-ctx.Done():
		return zero, ctx.Err()
	}
}

// roundTrip wraps and unwraps a throwaway key.
func roundTrip(ctx context.Context, k keys.KEK, unwrap bool) keys.Check {
	name := "test wrap/unwrap with " + k.URI()
	test, err := keys.NewDEK(bytes.Repeat([]byte{0x5a}, keys.DEKSize))
	if err != nil {
		return keys.Check{Name: name, Info: err.Error()}
	}
	defer test.Zero()
	b := keys.ByID("rekey-preflight")
	w, err := k.Wrap(ctx, b, test)
	if err != nil {
		return keys.Check{Name: name, Info: err.Error()}
	}
	if !unwrap {
		return keys.Check{Name: name, OK: true, Info: "wrap only"}
	}
	got, err := k.Unwrap(ctx, b, k.Mechanism(), w)
	if err != nil {
		return keys.Check{Name: name, Info: err.Error()}
	}
	defer got.Zero()
	if !bytes.Equal(got.Bytes(), test.Bytes()) {
		return keys.Check{Name: name, Info: "the unwrapped key differs from the wrapped one"}
	}
	return keys.Check{Name: name, OK: true, Info: k.Mechanism()}
}
