// What delivery's gRPC calls (DeliveryService.VerifyRecipient) fail with, by
// name; each one's status is its base class's (libs/grpc errors.ts).
// Messages unchanged from before the classes.
import { InvalidFieldError, ResourceExhaustedError } from '@tern/grpc';

/** The address to verify is not local@domain. */
export class NotAnAddressError extends InvalidFieldError {
  override readonly name = 'NotAnAddressError';
  constructor(given: string) {
    super('address', `${JSON.stringify(given)} is not an address (local@domain)`);
  }
}

/** TERN_VERIFY_MAX_INFLIGHT verifications already running on this pod: the caller tries later. */
export class VerifyBusyError extends ResourceExhaustedError {
  override readonly name = 'VerifyBusyError';
  constructor(maxInflight: number) {
    super(`${maxInflight} verifications in progress on this delivery pod (TERN_VERIFY_MAX_INFLIGHT)`);
  }
}
