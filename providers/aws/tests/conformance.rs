//! The provider conformance suite against the AWS endpoint in
//! `AWS_ENDPOINT_URL` (moto from `scripts/moto.sh`, or LocalStack).
//! Without it every scenario prints why it skipped and passes.

use portico_aws::testing as common;

use common::AwsHarness;

portico_provider::conformance_tests!({
    if common::skip() {
        return;
    }
    AwsHarness::start()
});
