//! `response_format: {"type": "json_object"}` as a GBNF grammar for llama.cpp's grammar
//! sampler: the answer is one JSON object (RFC 8259), with bounded runs of whitespace so a
//! small model cannot pad an answer out to its token limit.

pub const JSON_OBJECT: &str = r#"
root    ::= object
value   ::= object | array | string | number | "true" | "false" | "null"
object  ::= "{" ws ( member ( "," ws member )* )? "}" ws
member  ::= string ":" ws value
array   ::= "[" ws ( value ( "," ws value )* )? "]" ws
string  ::= "\"" char* "\"" ws
char    ::= [^"\\\x7F\x00-\x1F] | "\\" ( ["\\/bfnrt] | "u" [0-9a-fA-F]{4} )
number  ::= "-"? ( "0" | [1-9] [0-9]{0,15} ) ( "." [0-9]{1,16} )? ( [eE] [-+]? [0-9]{1,3} )? ws
ws      ::= [ \t\n]{0,8}
"#;
