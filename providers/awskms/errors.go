package awskms

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"

	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/smithy-go"

	"rekey/providers/keys"
)

// ServiceError is an answer of AWS KMS reduced to what is safe to print:
// the operation, error code, HTTP status and request id. The service's
// message is never copied (it may echo request values).
type ServiceError struct {
	Op        string
	Code      string
	Status    int
	RequestID string
}

func (e *ServiceError) Error() string {
	s := "AWS KMS " + e.Op + ": " + e.Code
	if e.Status != 0 {
		s += fmt.Sprintf(" (HTTP %d", e.Status)
		if e.RequestID != "" {
			s += ", request " + e.RequestID
		}
		s += ")"
	}
	return s
}

// op is a KMS operation, for classification and messages.
type op string

const (
	opDescribe  op = "DescribeKey"
	opEncrypt   op = "Encrypt"
	opDecrypt   op = "Decrypt"
	opReEncrypt op = "ReEncrypt"
	opGenerate  op = "GenerateDataKey"
)

// unwraps reports whether o reads a ciphertext: a refused input is then a
// bad wrapped key rather than a bad request.
func (o op) unwraps() bool { return o == opDecrypt || o == opReEncrypt }

// classify maps an SDK error onto the keys sentinels; what names the
// operation and key, region its region (for hints).
func classify(ctx context.Context, err error, o op, what, region string) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%s: %w", what, ctx.Err())
	}
	var api smithy.APIError
	if !errors.As(err, &api) {
		return transport(err, what)
	}
	se := &ServiceError{Op: string(o), Code: api.ErrorCode()}
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		se.Status, se.RequestID = re.HTTPStatusCode(), re.ServiceRequestID()
	}
	wrap := func(sentinel error, hint string) error {
		if hint != "" {
			hint = " (" + hint + ")"
		}
		return fmt.Errorf("%s: %w: %w%s", what, sentinel, se, hint)
	}
	switch se.Code {
	case "ThrottlingException", "LimitExceededException", "TooManyRequestsException", "RequestLimitExceeded":
		return keys.Retryable(wrap(keys.ErrThrottled, "rekey slows down and retries; the account's KMS request quota in "+region+" is shared by every caller"))
	case "KMSInternalException", "InternalFailure", "InternalFailureException", "ServiceUnavailable",
		"ServiceUnavailableException", "DependencyTimeoutException", "KeyUnavailableException", "RequestTimeout",
		"RequestTimeoutException", "XksProxyUriUnreachableException":
		return keys.Retryable(wrap(errTransient, ""))
	case "NotFoundException":
		return wrap(keys.ErrKeyNotFound, "is the key id, alias or region right? aws kms list-aliases --region "+region)
	case "DisabledException":
		return wrap(keys.ErrNotPermitted, "the key is disabled: aws kms enable-key --key-id KEY --region "+region)
	case "KMSInvalidStateException":
		return wrap(keys.ErrNotPermitted, "the key is pending deletion, pending import or unavailable: aws kms describe-key --key-id KEY --region "+region)
	case "AccessDeniedException":
		hint := "the IAM and key policies must allow kms:" + string(o) + " on this key to the caller"
		if o == opReEncrypt {
			hint = "ReEncrypt runs with the source key's credentials: they need kms:ReEncryptFrom on the source key and kms:ReEncryptTo on the target key (its key policy, for another account)"
		}
		return wrap(keys.ErrNotPermitted, hint)
	case "UnrecognizedClientException", "InvalidSignatureException", "IncompleteSignature", "IncompleteSignatureException",
		"MissingAuthenticationToken", "MissingAuthenticationTokenException", "InvalidClientTokenId",
		"ExpiredTokenException", "ExpiredToken", "SignatureDoesNotMatch", "AuthFailure":
		return wrap(keys.ErrAuthFailed, "check the credentials of the SDK's default chain: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or profile=, web identity, the instance role")
	case "InvalidCiphertextException", "IncorrectKeyException":
		return wrap(keys.ErrUnwrapFailed, "")
	case "InvalidKeyUsageException":
		return wrap(keys.ErrMechanism, "aws-kms wraps with symmetric encryption keys (SYMMETRIC_DEFAULT, ENCRYPT_DECRYPT)")
	case "ValidationException", "SerializationException", "InvalidArnException":
		if o.unwraps() {
			return wrap(keys.ErrUnwrapFailed, "")
		}
	}
	if se.Status >= 500 {
		return keys.Retryable(wrap(errTransient, ""))
	}
	if se.Status == 429 {
		return keys.Retryable(wrap(keys.ErrThrottled, ""))
	}
	return fmt.Errorf("%s: %w", what, se)
}

var errTransient = errors.New("transient AWS KMS error")

// transport classifies an error that is not a service answer: no
// credentials, or a network failure.
func transport(err error, what string) error {
	msg := err.Error()
	if strings.Contains(msg, "get identity:") || strings.Contains(msg, "failed to retrieve credentials") ||
		strings.Contains(msg, "failed to refresh cached credentials") {
		return fmt.Errorf("%s: %w: no usable AWS credentials: %v (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or profile=, or run with an instance role)", what, keys.ErrAuthFailed, err)
	}
	var ne net.Error
	if errors.As(err, &ne) || errors.Is(err, context.DeadlineExceeded) || strings.Contains(msg, "connection reset") ||
		strings.Contains(msg, "EOF") || strings.Contains(msg, "broken pipe") || strings.Contains(msg, "connection refused") ||
		strings.Contains(msg, "request send failed") {
		return keys.Retryable(fmt.Errorf("%s: %w: %v", what, errTransient, err))
	}
	return fmt.Errorf("%s: %w", what, err)
}
