package repo

import (
	"context"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
)

// deleteBatch is the most keys one DeleteObjects request may name (S3's
// limit).
const deleteBatch = 1000

// deleteAll removes the objects names. Retiring a point or a stretch of
// WAL removes hundreds to thousands of objects at once: on S3 they go in
// DeleteObjects requests of up to a thousand keys, a round trip per
// thousand instead of one per object; elsewhere one by one. The batches
// go in order (the oldest WAL first); a crash halfway leaves a retired
// point's leftover (its marker went first), which the next locked command
// removes, or WAL older than every point still needs.
func deleteAll(ctx context.Context, st Storage, names []string) error {
	s, ok := st.(*S3)
	if !ok {
		for _, n := range names {
			if err := st.Delete(ctx, n); err != nil {
				return err
			}
		}
		return nil
	}
	for len(names) > 0 {
		batch := names[:min(len(names), deleteBatch)]
		names = names[len(batch):]
		if err := s.deleteBatch(ctx, batch); err != nil {
			return err
		}
	}
	return nil
}

// deleteBatch removes up to deleteBatch objects in one request. S3 answers
// a missing key with success, as Delete does; a key the store refused
// fails the whole call, named.
func (s *S3) deleteBatch(ctx context.Context, names []string) error {
	ids := make([]types.ObjectIdentifier, len(names))
	for i, n := range names {
		ids[i] = types.ObjectIdentifier{Key: aws.String(s.Prefix + n)}
	}
	out, err := s.Client.DeleteObjects(ctx, &s3.DeleteObjectsInput{
		Bucket: aws.String(s.Bucket),
		Delete: &types.Delete{Objects: ids, Quiet: aws.Bool(true)},
	})
	if err != nil {
		return s.err("delete", names[0], err)
	}
	if len(out.Errors) > 0 {
		e := out.Errors[0]
		return fmt.Errorf("delete %s%s: %s: %s (and %d more)", s.String(), aws.ToString(e.Key)[len(s.Prefix):],
			aws.ToString(e.Code), aws.ToString(e.Message), len(out.Errors)-1)
	}
	return nil
}
