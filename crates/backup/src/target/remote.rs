//! A directory target reached over HTTP. An instance holds no directory outside its own, so it
//! sends each object operation as a request on its egress channel to [`DIR_ORIGIN`], and control
//! carries it out in that instance's own subdirectory of the operator's backup root.
//! [`DirRequest`] is the protocol, read by both sides.

use super::{check_name, Target, KINDS};
use async_trait::async_trait;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use selfcloud_core::{Error, ErrorCode, Result};

/// The origin of the directory target (a reserved name that resolves nowhere: control answers).
pub const DIR_ORIGIN: &str = "http://backup-directory.invalid";

/// Sends one request and reads its whole answer.
#[async_trait]
pub trait Transport: Send + Sync {
    async fn send(&self, request: Request<Bytes>) -> Result<Response<Bytes>>;
}

/// One operation on a directory target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DirRequest {
    Put(String),
    Get(String),
    Delete(String),
    /// The names of one kind: `GET /<kind>/`, answered as a JSON array.
    List(String),
}

impl DirRequest {
    /// The operation a request names, or why it names none.
    pub fn parse(method: &Method, path: &str) -> Result<DirRequest> {
        let path = path.strip_prefix('/').ok_or_else(|| Error::invalid("a directory target's path is absolute"))?;
        if let Some(kind) = path.strip_suffix('/') {
            if *method == Method::GET && KINDS.contains(&kind) {
                return Ok(DirRequest::List(kind.to_owned()));
            }
            return Err(Error::invalid(format!("not a list of objects: {method} /{path}")));
        }
        check_name(path).map_err(|_| Error::invalid(format!("not a backup object: /{path}")))?;
        let name = path.to_owned();
        match *method {
            Method::PUT => Ok(DirRequest::Put(name)),
            Method::GET => Ok(DirRequest::Get(name)),
            Method::DELETE => Ok(DirRequest::Delete(name)),
            _ => Err(Error::invalid(format!("{method} is not an operation of a directory target"))),
        }
    }

    fn request(&self, body: Bytes) -> Result<Request<Bytes>> {
        let (method, path) = match self {
            DirRequest::Put(name) => (Method::PUT, name.clone()),
            DirRequest::Get(name) => (Method::GET, name.clone()),
            DirRequest::Delete(name) => (Method::DELETE, name.clone()),
            DirRequest::List(kind) => (Method::GET, format!("{kind}/")),
        };
        Request::builder().method(method).uri(format!("{DIR_ORIGIN}/{path}")).body(body).map_err(Error::internal)
    }
}

/// A directory target on the far side of a [`Transport`].
pub struct RemoteDir<T> {
    transport: T,
}

impl<T: Transport> RemoteDir<T> {
    pub fn new(transport: T) -> Self {
        RemoteDir { transport }
    }

    async fn call(&self, op: DirRequest, body: Bytes) -> Result<Option<Bytes>> {
        let answer = self.transport.send(op.request(body)?).await?;
        let status = answer.status();
        if status == StatusCode::NOT_FOUND && matches!(op, DirRequest::Get(_)) {
            return Ok(None);
        }
        if !status.is_success() {
            let body = answer.into_body();
            return Err(Error::from_body(&body, None).unwrap_or_else(|| {
                Error::new(ErrorCode::UpstreamFailed, format!("the directory target answered {status}"))
            }));
        }
        Ok(Some(answer.into_body()))
    }
}

#[async_trait]
impl<T: Transport> Target for RemoteDir<T> {
    async fn put(&self, name: &str, bytes: Vec<u8>) -> Result<()> {
        self.call(DirRequest::Put(name.to_owned()), bytes.into()).await.map(drop)
    }

    async fn get(&self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.call(DirRequest::Get(name.to_owned()), Bytes::new()).await?.map(|b| b.to_vec()))
    }

    async fn list(&self, kind: &str) -> Result<Vec<String>> {
        let body = self.call(DirRequest::List(kind.to_owned()), Bytes::new()).await?.unwrap_or_default();
        let names: Vec<String> = serde_json::from_slice(&body)
            .map_err(|_| Error::new(ErrorCode::UpstreamFailed, "the directory target's list is not a list of names"))?;
        // What the far side lists is checked like anything it sends.
        names.into_iter().filter(|n| check_name(n).is_ok() && n.starts_with(kind)).map(Ok).collect()
    }

    async fn delete(&self, name: &str) -> Result<()> {
        self.call(DirRequest::Delete(name.to_owned()), Bytes::new()).await.map(drop)
    }
}

/// Serves one request of the protocol on `target` (control's side): the answer to send back.
pub async fn serve(target: &dyn Target, method: &Method, path: &str, body: Bytes) -> Result<Response<Bytes>> {
    let answer =
        |status: StatusCode, body: Bytes| Response::builder().status(status).body(body).map_err(Error::internal);
    match DirRequest::parse(method, path)? {
        DirRequest::Put(name) => {
            target.put(&name, body.to_vec()).await?;
            answer(StatusCode::NO_CONTENT, Bytes::new())
        }
        DirRequest::Get(name) => match target.get(&name).await? {
            Some(bytes) => answer(StatusCode::OK, bytes.into()),
            None => Err(Error::not_found("no such object")),
        },
        DirRequest::Delete(name) => {
            target.delete(&name).await?;
            answer(StatusCode::NO_CONTENT, Bytes::new())
        }
        DirRequest::List(kind) => {
            let names = target.list(&kind).await?;
            answer(StatusCode::OK, serde_json::to_vec(&names).map_err(Error::internal)?.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::DirTarget;

    const NAME: &str = "packs/0123456789abcdef0123456789abcdef";

    #[test]
    fn the_protocol_names_objects_and_lists_only() {
        assert_eq!(DirRequest::parse(&Method::PUT, &format!("/{NAME}")).unwrap(), DirRequest::Put(NAME.into()));
        assert_eq!(DirRequest::parse(&Method::GET, "/snapshots/").unwrap(), DirRequest::List("snapshots".into()));
        for (method, path) in [
            (Method::GET, "/../etc/passwd"),
            (Method::GET, "/packs/../keys/0123456789abcdef0123456789abcdef"),
            (Method::PUT, "/packs/"),
            (Method::POST, "/packs/0123456789abcdef0123456789abcdef"),
            (Method::GET, "/etc/"),
            (Method::GET, "packs/0123456789abcdef0123456789abcdef"),
        ] {
            assert!(DirRequest::parse(&method, path).is_err(), "{method} {path}");
        }
    }

    /// The far side served in this process: what the instance sends, control answers.
    struct Loop(DirTarget);

    #[async_trait]
    impl Transport for Loop {
        async fn send(&self, request: Request<Bytes>) -> Result<Response<Bytes>> {
            assert!(request.uri().to_string().starts_with(DIR_ORIGIN));
            let (head, body) = request.into_parts();
            match serve(&self.0, &head.method, head.uri.path(), body).await {
                Ok(answer) => Ok(answer),
                Err(e) => Ok(Response::builder().status(e.status()).body(e.body().to_string().into()).unwrap()),
            }
        }
    }

    #[tokio::test]
    async fn a_remote_directory_is_a_target_like_a_local_one() {
        let dir = tempfile::tempdir().unwrap();
        let remote = RemoteDir::new(Loop(DirTarget::new(dir.path())));
        assert_eq!(remote.get(NAME).await.unwrap(), None);
        remote.put(NAME, b"sealed".to_vec()).await.unwrap();
        assert_eq!(remote.get(NAME).await.unwrap().as_deref(), Some(&b"sealed"[..]));
        assert_eq!(remote.list("packs").await.unwrap(), vec![NAME.to_owned()]);
        assert!(remote.list("keys").await.unwrap().is_empty());
        remote.delete(NAME).await.unwrap();
        assert_eq!(std::fs::read_dir(dir.path().join("packs")).unwrap().count(), 0);
    }
}
