prelude
import BlockCert.Core
import BlockCert.Arith
import BlockCert.Bound
import BlockCert.Composition
import BlockCert.Check
