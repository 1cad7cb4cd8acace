// Package e2e holds the cross-store end-to-end tests: the real pipeline
// reencrypting from oss:// to s3:// and rewrapping on s3://, each output
// checked by a verify run. It has no non-test code.
package e2e
